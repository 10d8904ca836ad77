"""Shared set-up for the thin entry points in upmp.bin: parser, logging, errors, threads, input checks.

Every entry point has `get_parser()` and `main(argv=None)`, and ends with

    if __name__ == "__main__":
        run_main(main)

`run_main` prints an expected error (`upmp.errors.UpmpError`) as one line and exits 1, Ctrl-C
as one line with exit 130; anything else is a bug and raises with its traceback. Options are
flags (`--name value`); positionals only where a Kaldi tool's calling form has them
(data_dir's `validate data/x`, perturb_speed's `src dest`, run.pl's `JOB=1:N log command`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
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
