"""Shared set-up for the thin entry points in upmp.bin: logging and threads."""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")


def set_num_threads(num_threads: int) -> None:
    """Limit torch's intra-op threads (parallel jobs share the machine's cores)."""
    import torch
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error (no traceback) and exit."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(code)
