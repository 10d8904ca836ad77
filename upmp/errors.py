"""Expected errors: bad input a user can fix (a data file, a config value, a model file).

Every entry point prints an `UpmpError` as one line naming the file, line or key, the problem
and what to do, and exits 1 (`upmp.bin.common.run_main`); anything else is a bug and raises with
its traceback. The subclasses keep `ValueError` / `RuntimeError` as a second base so callers that
catch those still do.
"""
from __future__ import annotations


class UpmpError(Exception):
    """Bad input, reported as one line without a traceback."""

    def __init__(self, *args):
        # A torch DataLoader worker re-raises as type(e)("Caught ... Original Traceback ...: <message>"):
        # keep the one line, so an error in a worker reads as it would in the main process.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "\nOriginal Traceback" in args[0]:
            head = f"{type(self).__module__}.{type(self).__qualname__}: "
            if head in args[0]:
                args = (args[0].rsplit(head, 1)[1].strip(),)
        super().__init__(*args)


class ConfigError(UpmpError, ValueError):
    """A training / scoring configuration key has a wrong name, type or value."""


class DataDirError(UpmpError, ValueError):
    """A Kaldi data file or directory breaks Kaldi's rules (message names file and line)."""


class AudioError(UpmpError, RuntimeError):
    """A wav.scp entry could not be read, or its samples are unusable."""


class JobArgsError(UpmpError, ValueError):
    """A run.pl / queue.pl / slurm.pl command line is malformed."""


class ModelFileError(UpmpError, ValueError):
    """A model / checkpoint file is missing, truncated, not ours or from an incompatible version."""


class ScoringError(UpmpError, ValueError):
    """Trials, scores or embeddings that cannot be scored (empty list, duplicate trial, one class only)."""


class UpstreamError(UpmpError, RuntimeError):
    """An upstream cannot be built here: unknown name, weights neither cached nor downloadable,
    or layer stacks of another upstream than the model's."""


class DiskFullError(UpmpError, OSError):
    """An output could not be written: the disk (or quota) is full."""


class OutputError(UpmpError, RuntimeError):
    """An output path cannot be written: another process is writing it, or it holds what the
    command did not write (an experiment, a user's folder) and must not be replaced."""
