"""Atomic file writes: a temporary file in the target's directory, then a rename.

A crash, Ctrl-C or bad input never leaves a half-written file under the final name, and a file
already in place stays intact until its replacement is complete.
"""
from __future__ import annotations

import contextlib
import errno
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


def torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)`; a write that fails on a full disk is the OSError (ENOSPC) it is: torch
    reports it as a RuntimeError ("PytorchStreamWriter failed writing file")."""
    import torch
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        if not _disk_full(Path(path).parent):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)  # less than 1 MiB left for us


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)` atomically (torch is imported only here, when called)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with named_in_errors(path):
            torch_save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
