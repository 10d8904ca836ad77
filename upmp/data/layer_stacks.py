"""Layer stacks: how all hidden states of an upstream are stored in Kaldi ark/scp.

A layer stack of one utterance is a tensor (L, T, D): L hidden states (hidden
state 0, the CNN/projection output, first), T frames, D channels. Backends take
batches as (B, D, L, T).

Storage in Kaldi ark/scp (a Kaldi matrix is 2-D): one matrix per utterance of
shape (T, L * D), layer-major columns, i.e. column l * D + d holds channel d of
hidden state l. `layer_stack.json` beside the scp records L, D, the frame
shift and the upstream, so readers can reshape. Storage precisions:
  float32     Kaldi float matrix (any Kaldi tool reads it)
  compressed  Kaldi compressed matrix (lossy 8/16-bit, ~4x smaller, Kaldi-readable)
  float16     numpy half array inside the ark (half the disk; kaldiio reads it,
              Kaldi binaries do not)
Rows are stored one after another (float32 / float16), so frames [s, s+n) of an utterance
are one contiguous byte range: MatrixReader reads a training crop by offset, never the whole
utterance (compressed matrices are column-major and decode whole).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List

import numpy as np

from upmp.errors import DataDirError
from upmp.fileio import atomic_write_text

STORAGE_TYPES = ("float32", "float16", "compressed")
META_NAME = "layer_stack.json"


@dataclass
class LayerStackMeta:
    num_layers: int          # L, hidden state 0 included
    dim: int                 # D
    frame_shift: float       # seconds per frame
    upstream: str
    storage: str = "float32"
    layout: str = "T x (L*D), column l*D+d = channel d of hidden state l (0 = CNN output)"

    def write(self, directory: str) -> None:
        atomic_write_text(Path(directory) / META_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str) -> "LayerStackMeta":
        path = Path(directory) / META_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; extract layer stacks first (stage 1)")
        return cls(**json.loads(path.read_text()))


def stack_to_matrix(stack: np.ndarray) -> np.ndarray:
    """(L, T, D) -> (T, L*D)."""
    L, T, D = stack.shape
    return np.ascontiguousarray(stack.transpose(1, 0, 2).reshape(T, L * D))


def matrix_to_stack(mat: np.ndarray, num_layers: int) -> np.ndarray:
    """(T, L*D) -> (L, T, D)."""
    T, LD = mat.shape
    if LD % num_layers:
        raise ValueError(f"matrix width {LD} is not a multiple of {num_layers} layers")
    return mat.reshape(T, num_layers, LD // num_layers).transpose(1, 0, 2)


class LayerStackWriter:
    """Write (L, T, D) stacks into `<prefix>.ark` / `<prefix>.scp` (or the scp at scp_path)."""

    def __init__(self, prefix: str, storage: str = "float32", scp_path: str = None):
        import kaldiio
        if storage not in STORAGE_TYPES:
            raise ValueError(f"storage must be one of {STORAGE_TYPES}, got {storage!r}")
        self.storage = storage
        kwargs = {}
        if storage == "compressed":
            kwargs["compression_method"] = 2  # kSpeechFeature: per-column 8-bit with 16-bit headers
        elif storage == "float16":
            kwargs["write_function"] = "numpy"
        self._writer = kaldiio.WriteHelper(f"ark,scp:{prefix}.ark,{scp_path or prefix + '.scp'}", **kwargs)

    def write(self, utt: str, stack: np.ndarray) -> None:
        mat = stack_to_matrix(stack)
        mat = mat.astype(np.float16 if self.storage == "float16" else np.float32)
        self._writer(utt, mat)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_stack(entry: str, num_layers: int) -> np.ndarray:
    """scp value (`file.ark:offset`) -> float32 (L, T, D)."""
    import kaldiio
    mat = np.asarray(kaldiio.load_mat(entry), dtype=np.float32)
    return matrix_to_stack(mat, num_layers)


def batches_by_length(lengths: List[int], max_samples: int, max_batch: int = 64) -> Iterable[List[int]]:
    """Indices grouped longest first so each padded batch holds <= max_samples samples
    (max_samples <= 0: one index per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_samples <= 0:
        yield from ([i] for i in order)
        return
    batch: List[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > max_samples or len(batch) >= max_batch:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# --- Row-range reads -------------------------------------------------------------------------------
# A (T, L*D) matrix is stored row-major after a small header, so frames [s, s+n) of a float
# matrix or a numpy half array are one contiguous byte range of the ark: a crop reads only its
# own rows. Compressed matrices are stored column-major (per-column headers) and decode whole.

_FLOAT_TOKENS = {b"FM": "<f4", b"DM": "<f8"}
_COMPRESSED_TOKENS = (b"CM", b"CM2", b"CM3")


@dataclass(frozen=True)
class MatrixLocation:
    """Where one utterance's matrix lies: rows [0, rows) of `cols` values of `dtype` from byte
    `data_offset` of `path` (dtype None: decode the whole entry with kaldiio, e.g. compressed)."""
    path: str
    data_offset: int
    rows: int
    cols: int
    dtype: "str | None"

    @property
    def decoded_bytes(self) -> int:
        """Memory the decoded matrix takes (compressed entries decode to float32)."""
        return self.rows * self.cols * (np.dtype(self.dtype).itemsize if self.dtype else 4)


def _parse_header(head: bytes, where: str):
    """(header size, rows, cols, dtype or None) of a binary Kaldi matrix or kaldiio numpy array."""
    import struct
    if head.startswith(b"\0B"):
        token = head[2:head.index(b" ", 2)]
        if token in _FLOAT_TOKENS:
            size = 2 + len(token) + 1
            rows, cols = struct.unpack("<xixi", head[size:size + 10])
            return size + 10, rows, cols, _FLOAT_TOKENS[token]
        if token in _COMPRESSED_TOKENS:  # global header: min, range (floats), rows, cols
            size = 2 + len(token) + 1
            rows, cols = struct.unpack("<8xii", head[size:size + 16])
            return None, rows, cols, None
        raise DataDirError(f"{where}: Kaldi object {token.decode(errors='replace')!r} is not a matrix")
    if head.startswith(b"NPY"):
        import io
        nlen = head[3]
        start = 4 + nlen
        buf = io.BytesIO(head[start:])
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf)
        if len(shape) != 2 or fortran or dtype.byteorder == ">":
            raise DataDirError(f"{where}: numpy array of shape {shape} is not a C-order (T, L*D) matrix")
        return start + buf.tell(), shape[0], shape[1], dtype.newbyteorder("<").str
    return None, None, None, None  # text or something else: kaldiio decodes it whole


class MatrixReader:
    """Reads rows of the matrices behind scp entries by byte offset.

    The headers are parsed once, at construction (one small read per entry); a read of rows
    [s, s+n) is then one `preadv` of exactly those rows into the caller's buffer. File
    descriptors are opened lazily in each process (a DataLoader worker opens its own; none is
    pickled) and pread keeps no shared file position, so forked workers never race.
    `bytes_read` counts the bytes this process has read through the reader.
    """

    def __init__(self, entries: List[str], source: str = "scp"):
        import kaldiio
        import kaldiio.matio as matio
        self.source = source
        self.entries = list(entries)
        self.locations: List[MatrixLocation] = []
        self.bytes_read = 0
        self._fds: dict = {}
        self._pid = None
        found: dict = {}  # ark as written -> where it is
        for key, entry in enumerate(self.entries):
            path, offset, slices = matio._parse_arkpath(entry)
            if not path.rstrip().endswith("|"):
                if path not in found:
                    found[path] = self._locate(path, entry)
                if found[path] != path:
                    entry = self.entries[key] = entry.replace(path, found[path], 1)
                    path = found[path]
            loc = None
            if offset is not None and slices is None and Path(path).is_file():
                head = self._pread(path, 512, offset)
                size, rows, cols, dtype = _parse_header(head, f"{source}: entry {entry!r}")
                if rows is not None:
                    loc = MatrixLocation(path, offset + (size or 0), rows, cols, dtype)
            if loc is None:  # a pipe, a range or a text matrix: decode whole now to learn the shape
                rows, cols = np.shape(kaldiio.load_mat(entry))
                loc = MatrixLocation(entry, -1, rows, cols, None)
            self.locations.append(loc)
        self.bytes_read = 0  # the headers are not the data

    def _locate(self, path: str, entry: str) -> str:
        """An ark path as the scp gives it: found from the current directory, else (a relative
        path, as stage 1 writes them from the recipe dir) from the nearest directory above the scp
        that holds it; missing everywhere is one error naming the scp and the entry."""
        if Path(path).is_file():
            return path
        if not Path(path).is_absolute():
            for parent in Path(self.source).resolve().parents:
                if (parent / path).is_file():
                    return str(parent / path)
        raise DataDirError(f"{self.source}: {path} (entry {entry!r}) is not found from {Path.cwd()} nor from a "
                           "directory above the scp; run from the recipe dir that wrote it, or write the layer "
                           "stacks again (stage 1)")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None
        return state

    def _fd(self, path: str) -> int:
        import os
        if self._pid != os.getpid():  # a forked worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def _pread(self, path: str, n: int, offset: int) -> bytes:
        import os
        data = os.pread(self._fd(path), n, offset)
        self.bytes_read += len(data)
        return data

    def __len__(self) -> int:
        return len(self.locations)

    def rows(self, i: int) -> int:
        return self.locations[i].rows

    def read(self, i: int) -> np.ndarray:
        """The whole matrix i, in its stored dtype (compressed / text: float32)."""
        return self.read_rows(i, 0, self.locations[i].rows)

    def read_rows(self, i: int, start: int, n: int, out: "np.ndarray | None" = None) -> np.ndarray:
        """Rows [start, start+n) of matrix i, into `out` (n, cols) when given (cast to its dtype)."""
        import os
        loc = self.locations[i]
        if not 0 <= start <= start + n <= loc.rows:
            raise IndexError(f"rows [{start}, {start + n}) outside the {loc.rows} rows of {self.entries[i]}")
        if loc.dtype is None:
            import kaldiio
            mat = np.asarray(kaldiio.load_mat(self.entries[i]), dtype=np.float32)[start:start + n]
            if loc.data_offset >= 0:
                self.bytes_read += loc.rows * loc.cols  # 8-bit codes, about the compressed size
        else:
            if out is None or out.dtype != np.dtype(loc.dtype) or not out.flags.c_contiguous:
                mat = np.empty((n, loc.cols), dtype=loc.dtype)
            else:
                mat = out
            nbytes = mat.nbytes
            got = os.preadv(self._fd(loc.path), [memoryview(mat).cast("B")],
                            loc.data_offset + start * loc.cols * mat.itemsize)
            self.bytes_read += got
            if got != nbytes:
                raise DataDirError(f"{self.source}: {self.entries[i]}: ark truncated "
                                 f"({got} of {nbytes} bytes); re-extract the layer stacks (stage 1)")
        if out is None:
            return mat
        if mat is not out:
            out[...] = mat
        return out

    def close(self) -> None:
        import os
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}
