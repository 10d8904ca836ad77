"""Atomic file writes: a temporary file in the target's directory, then a rename.

A crash, Ctrl-C or bad input never leaves a half-written file under the final name, and a file
already in place stays intact until its replacement is complete.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def named_in_errors(path: PathLike):
    """Around writes to `path`: an OSError without a file name (write() on a full disk reports none)
    gets `path`, so the error a user sees names what was being written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def _temp_beside(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return tmp


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with named_in_errors(path), open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)` atomically (torch is imported only here, when called)."""
    import torch
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with named_in_errors(path):
            torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
