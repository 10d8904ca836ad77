"""Shared set-up for the thin entry points in upmp.bin: parser, logging, errors, threads, input checks.

Every entry point has `get_parser()` and `main(argv=None)`, and ends with

    if __name__ == "__main__":
        run_main(main)

`run_main` prints an expected error (`upmp.errors.UpmpError`) as one line and exits 1, Ctrl-C
as one line with exit 130, an OSError that means a path the user gave cannot be used (read-only,
forbidden, a file where a directory is expected or the reverse, disk full: unusable_path_message) as
one line naming the path; anything else is a bug and raises with its traceback. Options are
flags (`--name value`); positionals only where a Kaldi tool's calling form has them
(data_dir's `validate data/x`, perturb_speed's `src dest`, run.pl's `JOB=1:N log command`).
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from upmp.errors import DataDirError, UpmpError


def run_main(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> None:
    """Run an entry point's `main(argv)`; expected errors become one line on stderr and exit 1.
    An int returned by main is the exit status."""
    try:
        code = main(argv)
    except UpmpError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C); files already written are complete, rerun to resume", code=130)
    except OSError as e:
        message = unusable_path_message(e)
        if message is None:
            raise
        fail(message)
    if isinstance(code, int) and code:
        sys.exit(code)


def make_parser(doc: Optional[str], **kwargs) -> argparse.ArgumentParser:
    """The parser of an entry point: its module docstring as help text, and --verbose."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.add_argument("--verbose", action="store_true", help="debug-level logging")
    return p


def setup_logging(verbose: bool = False) -> None:
    """Log lines on stderr, the same form in every entry point (stdout stays for results)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")


def add_device_args(p: argparse.ArgumentParser, num_threads: int = 2) -> None:
    """--device (cpu, cuda, cuda:N: check_device) and --num_threads (set_num_threads) of the entry
    points that run a model."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--num_threads", type=int, default=num_threads, help="torch CPU threads")


def set_num_threads(num_threads: int) -> None:
    """Limit torch's intra-op threads (parallel jobs share the machine's cores)."""
    import torch
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error (no traceback) and exit. The line goes out in one write, so the lines
    of processes sharing a stderr (torchrun's ranks, parallel jobs) never interleave mid-line."""
    line = f"{os.path.basename(sys.argv[0])}: error: {message}\n"
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file (captured in tests)
        sys.stderr.write(line)
    else:
        os.write(fd, line.encode("utf-8", "replace"))
    sys.exit(code)


def require_files(**paths: Optional[str]) -> None:
    """Input files given as options must exist: `require_files(trials=args.trials)` -> one line
    naming the option and the path (files opened later then only fail on bad content)."""
    for option, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise DataDirError(f"--{option} {path}: no such file")


# our temp files and dirs (R: mkstemp's 8 random characters): .<name>.R, .<name>.R.tmp, .<name>.tmp, .<name>.tmp.R
_TEMP_NAME = re.compile(r"^\.(.+?)\.(?:[a-z0-9_]{8}(?:\.tmp)?|tmp(?:\.[a-z0-9_]{8})?)$")


def _shown(path) -> str:
    """A path as the user knows it: the temp files and dirs of atomic writes named by what they become."""
    parts = Path(os.fsdecode(path)).parts
    return str(Path(*[m.group(1) if (m := _TEMP_NAME.match(p)) else p for p in parts])) if parts else ""


def unusable_path_message(e: OSError) -> Optional[str]:
    """The one-line error of an OSError that means a path the user gave cannot be used: a read-only
    or forbidden place, a file where a directory is expected or the reverse, a full disk or quota;
    None for any other OSError (a bug: it keeps its traceback). Files already written are complete
    (upmp.fileio writes atomically), so each line ends with what to do and rerun."""
    path = e.filename2 if e.filename2 is not None else e.filename
    shown = None if path is None else _shown(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{shown}: " if shown else ""
        return (f"{where}no space left on the device ({e.strerror}); free space there or write to a larger disk, "
                f"and rerun: files already written are complete")
    if shown is None:
        return None
    if e.errno == errno.EROFS:
        return f"{shown}: read-only file system; give a path on a writable one (another --out / --exp_dir), and rerun"
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"{shown}: permission denied ({e.strerror}); give a path this user may use (another --out / "
                f"--exp_dir) or fix the permissions, and rerun")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocking = _file_in_the_way(shown)
        if blocking is None:
            return None  # EEXIST of anything but a file in a directory's place: a race or a bug
        also = f" (writing {shown})" if blocking != shown else ""
        return (f"{blocking}: is a file where a directory is expected{also}; give a directory path, or move "
                f"the file away, and rerun")
    if e.errno == errno.EISDIR:
        return f"{shown}: is a directory where a file is expected ({e.strerror}); give a file path, and rerun"
    return None


def _file_in_the_way(path: str) -> Optional[str]:
    """The path or the first of its ancestors that exists and is not a directory, if any."""
    p = Path(path)
    for q in [*reversed(p.parents), p]:
        if q.exists() and not q.is_dir():
            return str(q)
    return None


def require_writable(path: str, directory: bool = True) -> None:
    """Check an output path before any work (so a run does not fail after hours of it): it must be a
    directory (directory=True) or a file, not the other; no file may stand where one of its parents
    should be; and the nearest existing directory must take a new file. Creates nothing. Raises the
    OSError run_main prints as one line naming the path."""
    p = Path(path)
    blocking = _file_in_the_way(str(p.parent) if not directory else str(p))
    if blocking is not None:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
    if p.is_dir() and not directory:
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))
    nearest = p if p.is_dir() else next(q for q in p.parents if q.is_dir())
    try:
        fd, probe = tempfile.mkstemp(prefix=".upmp-write-test.", dir=nearest)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(p)) from None
    os.close(fd)
    os.unlink(probe)


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (`--chunk 0` is a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_device(device: str) -> None:
    """--device must name a device this machine has: `--device cuda` without a GPU (or cuda:N past the
    last one) is one line saying what to give instead, before any model is loaded."""
    import torch
    from upmp.errors import ConfigError
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device}: not a device name (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """Options of upmp.recipes.protocols.resolve_protocol (the paper's speaker splits and trials)."""
    from upmp.recipes.protocols import PAPER_URL
    p.add_argument("--protocol_dir", default=None, help="local copy of the paper's protocol files")
    p.add_argument("--protocol_cache", default=None,
                   help="download cache of the paper's protocol files [<out>/local/unipool-sv]")
    p.add_argument("--protocol_url", default=PAPER_URL,
                   help="base URL of the paper's data files ('none': do not download, regenerate)")
    p.add_argument("--seed", type=int, default=0, help="seed of a regenerated speaker split / trials")


def protocol_kwargs(args: argparse.Namespace) -> dict:
    """Those options as keyword arguments of the prepare_* functions (needs args.out)."""
    return dict(protocol_dir=args.protocol_dir, cache_dir=args.protocol_cache or f"{args.out}/local/unipool-sv",
                url_base=None if args.protocol_url.lower() in ("", "none") else args.protocol_url, seed=args.seed)
