"""Atomic file writes: a temporary file in the target's directory, then a rename; and the lock
that keeps two processes from writing one output.

A crash, Ctrl-C or bad input never leaves a half-written file under the final name, and a file
already in place stays intact until its replacement is complete. A directory is built beside its
destination and swapped in whole (`building_dir`, `replace_dir`); Kaldi vector files are written
ark first, scp last (`write_vectors`), so a present scp always names a complete ark.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from upmp.errors import OutputError

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


@contextlib.contextmanager
def output_lock(target: PathLike, lock_file: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `target` (an output a command writes) for the `with` block.

    The lock is flock(2) on `lock_file` (created, holding the holder's pid, removed on release):
    a second process gets OutputError naming the holder's pid. The kernel releases a flock when
    its process dies however it dies, so a killed run leaves no stale lock (the file that stays
    behind is locked again by the next run)."""
    import fcntl
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{target} is being written by another process (pid {pid}); "
                              "wait for it or choose another --out") from None
        # the previous holder may have removed the file between our open and our lock: then we
        # hold a lock on a deleted file, which nobody else sees; lock the file now in place instead
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:  # the pid is for the message only; a full disk is reported where the output is written
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)  # while still held: the next process locks a fresh file
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the C library,
    the kernel (< 3.15) or the file system does not provide it."""
    import ctypes
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: PathLike, dest: PathLike) -> None:
    """Put the complete directory `new` at `dest` (same file system), replacing a directory
    there: the two are swapped in one atomic step, then the old one is deleted. Nobody ever sees
    `dest` missing or half written."""
    new, dest = Path(new), Path(dest)
    if not dest.exists():
        os.rename(new, dest)
        return
    if _exchange(new, dest):
        shutil.rmtree(new)  # now the old directory
        return
    # No renameat2 here (old C library or kernel, or a file system without RENAME_EXCHANGE): two
    # renames, with a moment between them when `dest` does not exist; the old directory keeps a
    # unique name until the new one is in place, so nothing is lost if we are killed there.
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(new, dest)
    shutil.rmtree(old)


@contextlib.contextmanager
def building_dir(dest: PathLike, tag: str = "tmp") -> Iterator[Path]:
    """A fresh temporary directory `.<name>.<tag>.<random suffix>` beside `dest` (made with its parents) for
    the `with` block to fill; when the block completes, it replaces `dest` (replace_dir), and when the
    block raises (or we are interrupted) it is removed, leaving `dest` as it was."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}.", dir=dest.parent))  # unique per process
    try:
        yield tmp
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_vectors(out: PathLike, name: str, vectors) -> None:
    """Kaldi float vectors `<out>/<name>.ark` + `<name>.scp` (kaldiio; keys C-sorted, float32), as
    Kaldi, kaldiio and WeSpeaker read them; the scp names the ark as `<out>/<name>.ark`. Both are
    written under temporary names (removed on failure: a full disk keeps no half-written file) and
    renamed into place, the ark first, the scp last: an scp in place always names a complete ark.
    `vectors`: {key: (E,) array}."""
    import kaldiio
    import numpy as np
    out = Path(out)
    ark_name = f"{out}/{name}.ark"
    tmp_ark, tmp_scp = out / f".{name}.ark.tmp", out / f".{name}.scp.tmp"
    try:
        with named_in_errors(out / f"{name}.ark"), kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as w:
            for key in sorted(vectors, key=lambda k: k.encode()):
                w(key, np.asarray(vectors[key], dtype=np.float32))
        lines = []
        for line in tmp_scp.read_bytes().decode("utf-8").split("\n")[:-1]:  # `<key> <tmp ark>:<offset>`
            key, _, entry = line.partition(" ")
            lines.append(f"{key} {ark_name}:{entry.rpartition(':')[2]}\n")
        os.replace(tmp_ark, out / f"{name}.ark")
        with named_in_errors(out / f"{name}.scp"):
            tmp_scp.write_bytes("".join(lines).encode("utf-8"))
        os.replace(tmp_scp, out / f"{name}.scp")
    finally:  # after a failure: no temporary files left taking the disk's space
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)


def file_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 hex digest of a file's bytes (read in 1 MiB blocks), as sha256sum prints it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

