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
  int8        each (frame, hidden state) row of D values as D int8 codes with its own float16
              scale and offset (about a quarter of float32; kaldiio reads it, Kaldi binaries do
              not): see "int8 layer stacks" below
Rows are stored one after another (float32 / float16 / int8), so frames [s, s+n) of an utterance
are one contiguous byte range: MatrixReader reads a training crop by offset, never the whole
utterance (compressed matrices are column-major and decode whole).

int8 layer stacks. The scp and ark keep the convention of the other types (`<utt> <ark>:<offset>`,
the offset pointing at the object after `<utt> ` in the ark); the object is kaldiio's numpy entry:
`NPY`, a length header (the byte 4, then the .npy file's byte count as a little-endian uint32),
then a .npy file (version 1.0) whose header is
    {'descr': [('scale', '<f2'), ('offset', '<f2'), ('codes', '|i1', (D,))], 'fortran_order': False,
     'shape': (T, L), }
and whose data are T x L records of 4 + D bytes, frame-major: record (t, l) holds hidden state l
of frame t as float16 scale s, float16 offset o, then D int8 codes q, and value d is
o + s * q[d] (|error| <= s / 2: o is the row's mid-range, s its half-range / 127, q in
[-127, 127]). What a tool sees: kaldiio.load_mat returns that (T, L) numpy record array
(upmp.data.layer_stacks.int8_to_matrix widens it); a Kaldi binary (copy-matrix, feat-to-dim) finds
no Kaldi matrix token after the key (`NPY` where it expects `\0B` + FM/CM) and stops with a read
error, as it does for float16 stacks. The offset is kept because it measurably helps where rows are
not centred: on 60 utterances of the mini recipe's GE2E stacks, against a symmetric code (scale only)
it gains 5.0 dB SNR on hidden state 0 (a row's |mean| / std 0.4) and 0.4-1.2 dB on the others, for 2
bytes a row (0.26 % of a row at D = 768).
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np

from upmp.data.layout import ltd_to_tld, matrix_to_stack, merge_layers, split_layers, stack_to_matrix
from upmp.errors import ConfigError, DataDirError
from upmp.fileio import atomic_write_text

STORAGE_TYPES = ("float32", "float16", "compressed", "int8")
INT8_HEAD = 4  # bytes before each int8 row's codes: float16 scale, float16 offset
META_NAME = "layer_stack.json"


@dataclass
class LayerStackMeta:
    num_layers: int          # L, hidden state 0 included
    dim: int                 # D
    frame_shift: float       # seconds per frame
    upstream: str
    storage: str = "float32"
    layers: Optional[List[int]] = None  # the upstream's hidden states stored, in order (None: all)
    weights_sha256: Optional[str] = None  # the upstream's weights when a file names them (--upstream_ckpt,
    #                                       an hf:<dir>), upmp.upstream.extract.weights_id; None: the name does
    layout: str = "T x (L*D), column l*D+d = channel d of hidden state l (0 = CNN output)"

    def write(self, directory: str) -> None:
        atomic_write_text(Path(directory) / META_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str) -> "LayerStackMeta":
        path = Path(directory) / META_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; extract layer stacks first (stage 1)")
        return cls(**json.loads(path.read_text()))


# --- Layer subsets -----------------------------------------------------------------------------------

LAYERS_FORMS = "all, 0-12, 0,4,8,12 or top:K:<layer_probe.tsv | layer_usage.tsv>"


def parse_layers(spec, num_layers: Optional[int] = None, option: str = "--layers") -> Optional[List[int]]:
    """The upstream hidden states a --layers value names, ascending (None: all of them).

    Forms: `all`; indices and inclusive ranges separated by commas (`0-12`, `0,4,8,12`, `0-3,8`);
    `top:K:FILE`, the K best hidden states of a layer_probe.tsv (columns layer, eer_cosine, eer_plda:
    lowest eer_plda first, ties by eer_cosine) or of a trained model's layer_usage.tsv (columns layer,
    usage: highest first). With num_layers (the upstream's hidden-state count), an index beyond it
    is refused. A bad value is one ConfigError naming the option and what is allowed."""
    text = str(spec).strip()
    bad = f"{option} {text!r}"
    if text == "all":
        return None
    if text.startswith("top:"):
        k, _, path = text[4:].partition(":")
        if not k.isdigit() or int(k) < 1 or not path:
            raise ConfigError(f"{bad}: top needs a count and a file, top:K:<layer_probe.tsv | layer_usage.tsv> "
                              f"with K >= 1")
        layers = sorted(_rank_layers(path, option)[:int(k)])
        if len(layers) < int(k):
            raise ConfigError(f"{bad}: {path} ranks {len(layers)} hidden states, fewer than {k}")
    else:
        layers = []
        for token in text.split(","):
            a, dash, b = token.strip().partition("-")
            if not a.isdigit() or (dash and not b.isdigit()):
                raise ConfigError(f"{bad}: {token.strip()!r} is not a hidden-state index nor a range a-b; "
                                  f"give {LAYERS_FORMS}")
            lo, hi = int(a), int(b) if dash else int(a)
            if hi < lo:
                raise ConfigError(f"{bad}: range {token.strip()} runs backwards; write {hi}-{lo}")
            for i in range(lo, hi + 1):
                if i in layers:
                    raise ConfigError(f"{bad}: hidden state {i} is named twice")
                layers.append(i)
        layers.sort()
    if num_layers is not None and layers[-1] >= num_layers:
        raise ConfigError(f"{bad}: hidden state {layers[-1]} is beyond the upstream's {num_layers} "
                          f"(0-{num_layers - 1}, 0 = the CNN output)")
    return layers


def _rank_layers(path: str, option: str) -> List[int]:
    """Hidden states of a layer_probe.tsv or layer_usage.tsv, best first."""
    f = Path(path)
    if not f.is_file():
        raise ConfigError(f"{option}: {path} not found (a layer_probe.tsv of upmp.bin.layer_probe or the "
                          f"layer_usage.tsv of a trained experiment)")
    lines = [line.split("\t") for line in f.read_text().splitlines() if line.strip()]
    head = [h.strip() for h in lines[0]] if lines else []
    try:
        col = {name: head.index(name) for name in head}
        rows = [[cell.strip() for cell in line] for line in lines[1:]]
        rows = [r for r in rows if r[col["layer"]].isdigit()]  # a summary row (e.g. "average") is no layer
        if "eer_plda" in col and "eer_cosine" in col:
            key = [(float(r[col["eer_plda"]]), float(r[col["eer_cosine"]]), int(r[col["layer"]])) for r in rows]
        elif "usage" in col:
            key = [(-float(r[col["usage"]]), 0.0, int(r[col["layer"]])) for r in rows]
        else:
            raise KeyError("layer")
    except (KeyError, ValueError, IndexError):
        raise ConfigError(f"{option}: {path} is not a layer_probe.tsv (columns layer, eer_cosine, eer_plda) nor a "
                          f"layer_usage.tsv (columns layer, usage) with a number in every cell") from None
    return [layer for *_, layer in sorted(key)]


def layers_text(layers: Optional[List[int]]) -> str:
    """A layer subset as the messages name it: 'all', '0-12' or '0,4,8,12'."""
    if layers is None:
        return "all"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


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
        elif storage in ("float16", "int8"):
            kwargs["write_function"] = "numpy"
        self._writer = kaldiio.WriteHelper(f"ark,scp:{prefix}.ark,{scp_path or prefix + '.scp'}", **kwargs)

    def write(self, utt: str, stack: np.ndarray) -> None:
        if self.storage == "int8":
            self._writer(utt, quantize_int8(stack))
            return
        mat = stack_to_matrix(stack)
        mat = mat.astype(np.float16 if self.storage == "float16" else np.float32)
        self._writer(utt, mat)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- int8 ------------------------------------------------------------------------------------------

def int8_dtype(dim: int) -> np.dtype:
    """One (frame, hidden state) record of an int8 stack: float16 scale, float16 offset, D codes."""
    return np.dtype([("scale", "<f2"), ("offset", "<f2"), ("codes", "i1", (dim,))])


def quantize_int8(stack: np.ndarray) -> np.ndarray:
    """(L, T, D) float -> (T, L) int8 records: per row, offset o = mid-range and scale s = half-range
    / 127, both rounded to float16 first (s rounded up), then codes round((x - o) / s), so
    |x - (o + s q)| <= s / 2 for every value. Values must be finite and within float16's range
    (upmp.upstream.extract.check_stack)."""
    L, T, D = stack.shape
    x = ltd_to_tld(np.asarray(stack, dtype=np.float64))  # (T, L, D)
    out = np.empty((T, L), dtype=int8_dtype(D))
    if T == 0:
        return out
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    if not (np.abs(hi) <= 65504).all() or not (np.abs(lo) <= 65504).all():  # NaN fails too
        raise ValueError("int8 storage: values must be finite and within float16's range (check_stack first)")
    offset = ((hi + lo) / 2).astype(np.float16)
    o = offset.astype(np.float64)
    half = np.maximum(hi - o, o - lo)
    scale = (half / 127).astype(np.float16)
    short = scale.astype(np.float64) * 127 < half  # rounded down: one float16 step up covers it
    scale[short] = np.nextafter(scale[short], np.float16(np.inf))
    s = scale.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s[..., None] > 0, np.rint((x - o[..., None]) / s[..., None]), 0)
    out["scale"], out["offset"] = scale, offset
    out["codes"] = np.clip(q, -127, 127).astype(np.int8)
    return out


def int8_to_matrix(records: np.ndarray) -> np.ndarray:
    """(T, L) int8 records -> float32 (T, L*D)."""
    T, L = records.shape
    vals = records["codes"].astype(np.float32) * records["scale"].astype(np.float32)[..., None] \
        + records["offset"].astype(np.float32)[..., None]
    return merge_layers(vals)


def widen_int8_rows(raw: np.ndarray, num_layers: int) -> np.ndarray:
    """Raw bytes of int8 records (..., L * (4 + D)) uint8 -> float32 (..., L*D)."""
    rec = split_layers(np.ascontiguousarray(raw), num_layers)  # (..., L, 4 + D)
    head = np.ascontiguousarray(rec[..., :INT8_HEAD]).view("<f2").astype(np.float32)  # (..., L, 2)
    vals = rec[..., INT8_HEAD:].view(np.int8).astype(np.float32) * head[..., :1] + head[..., 1:]
    return merge_layers(vals)


def load_stack(entry: str, num_layers: int) -> np.ndarray:
    """scp value (`file.ark:offset`) -> float32 (L, T, D), whatever the storage; an entry that is not
    a readable layer stack of num_layers hidden states is a DataDirError naming it."""
    import kaldiio
    try:
        mat = kaldiio.load_mat(entry)
    except (ValueError, EOFError, OSError, KeyError) as e:  # truncated or foreign bytes
        raise DataDirError(f"{entry}: not a readable layer stack ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                           f"re-extract the layer stacks (stage 1)") from None
    if getattr(mat, "dtype", None) is not None and mat.dtype.names is not None:
        _check_int8_dtype(mat.dtype, entry)
        if mat.ndim != 2 or mat.shape[1] != num_layers:
            raise DataDirError(f"{entry}: int8 stack of shape {mat.shape}, not (T, {num_layers} hidden states); "
                               f"re-extract the layer stacks (stage 1)")
        mat = int8_to_matrix(mat)
    mat = np.asarray(mat, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[1] % num_layers:
        raise DataDirError(f"{entry}: matrix of shape {mat.shape} is not {num_layers} hidden states of one "
                           f"dimension; re-extract the layer stacks (stage 1)")
    return matrix_to_stack(mat, num_layers)


def _check_int8_dtype(dtype: np.dtype, where: str) -> int:
    """D of an int8 layer-stack record dtype; anything else is a DataDirError naming `where`."""
    names = dtype.names or ()
    if names == ("scale", "offset", "codes") and dtype["scale"] == np.dtype("<f2") \
            and dtype["offset"] == np.dtype("<f2") and dtype["codes"].base == np.dtype("i1") \
            and len(dtype["codes"].shape) == 1 and dtype.itemsize == INT8_HEAD + dtype["codes"].shape[0]:
        return dtype["codes"].shape[0]
    raise DataDirError(f"{where}: numpy records {dtype.descr} are not an int8 layer stack "
                       f"(scale <f2, offset <f2, codes i1 x D); re-extract the layer stacks (stage 1)")


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
    `data_offset` of `path` (dtype None: decode the whole entry with kaldiio, e.g. compressed).
    An int8 stack (int8_layers > 0) is read as raw bytes: dtype |u1, cols = L * (4 + D) bytes a
    frame, L = int8_layers (widen_int8_rows decodes them)."""
    path: str
    data_offset: int
    rows: int
    cols: int
    dtype: "str | None"
    int8_layers: int = 0

    @property
    def width(self) -> int:
        """Values a decoded row holds (L*D)."""
        if self.int8_layers:
            return self.cols - INT8_HEAD * self.int8_layers
        return self.cols

    @property
    def decoded_bytes(self) -> int:
        """Memory the read matrix takes (compressed entries decode to float32, int8 stay bytes)."""
        return self.rows * self.cols * (np.dtype(self.dtype).itemsize if self.dtype else 4)


def _parse_header(head: bytes, where: str):
    """(header size, rows, cols, dtype or None, int8 hidden states or 0) of a binary Kaldi matrix
    or kaldiio numpy array."""
    if head.startswith(b"\0B"):
        token = head[2:head.index(b" ", 2)]
        if token in _FLOAT_TOKENS:
            size = 2 + len(token) + 1
            rows, cols = struct.unpack("<xixi", head[size:size + 10])
            return size + 10, rows, cols, _FLOAT_TOKENS[token], 0
        if token in _COMPRESSED_TOKENS:  # global header: min, range (floats), rows, cols
            size = 2 + len(token) + 1
            rows, cols = struct.unpack("<8xii", head[size:size + 16])
            return None, rows, cols, None, 0
        raise DataDirError(f"{where}: Kaldi object {token.decode(errors='replace')!r} is not a matrix")
    if head.startswith(b"NPY"):
        import io
        nlen = head[3]
        start = 4 + nlen
        buf = io.BytesIO(head[start:])
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            shape, fortran, dtype = read_header(buf)
        except (ValueError, SyntaxError) as e:
            raise DataDirError(f"{where}: broken numpy header ({str(e).splitlines()[0]}); re-extract the "
                               "layer stacks (stage 1)") from None
        if len(shape) != 2 or fortran:
            raise DataDirError(f"{where}: numpy array of shape {shape} is not a C-order (T, L*D) matrix")
        if dtype.names is not None:  # int8 records (T, L): read as raw bytes
            D = _check_int8_dtype(dtype, where)
            return start + buf.tell(), shape[0], shape[1] * (INT8_HEAD + D), "|u1", shape[1]
        if dtype.kind != "f" or dtype.byteorder == ">":
            raise DataDirError(f"{where}: numpy array of {dtype} is not a float (T, L*D) matrix")
        return start + buf.tell(), shape[0], shape[1], dtype.newbyteorder("<").str, 0
    return None, None, None, None, 0  # text or something else: kaldiio decodes it whole


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
                head = self._pread(path, 1024, offset)
                where = f"{source}: entry {entry!r}"
                try:
                    size, rows, cols, dtype, int8_layers = _parse_header(head, where)
                except DataDirError:
                    raise
                except (ValueError, IndexError, struct.error):  # cut off inside the header, or foreign bytes
                    raise DataDirError(f"{where}: no matrix header at that offset of {path} (truncated or not "
                                       f"a layer-stack ark); re-extract the layer stacks (stage 1)") from None
                if rows is not None:
                    loc = MatrixLocation(path, offset + (size or 0), rows, cols, dtype, int8_layers)
                if dtype is not None:  # a cut-off ark is refused now, not at some crop of the training
                    end = loc.data_offset + rows * cols * np.dtype(dtype).itemsize
                    if end > self._size(path):
                        raise DataDirError(f"{where}: {path} is truncated (the matrix ends at byte {end}, the file at "
                                           f"{self._size(path)}); re-extract the layer stacks (stage 1)")
            if loc is None:  # a pipe, a range or a text matrix: decode whole now to learn the shape
                try:
                    rows, cols = np.shape(kaldiio.load_mat(entry))
                except (ValueError, EOFError, KeyError, OSError):  # foreign bytes (UnicodeDecodeError is one)
                    raise DataDirError(f"{source}: entry {entry!r}: no matrix header at that offset of {path} "
                                       f"(truncated or not a layer-stack ark); re-extract the layer stacks "
                                       f"(stage 1)") from None
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

    def _size(self, path: str) -> int:
        import os
        return os.fstat(self._fd(path)).st_size

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
        """The whole matrix i, in its stored dtype (compressed / text: float32; int8: raw bytes)."""
        return self.read_rows(i, 0, self.locations[i].rows)

    def read_float(self, i: int, start: int = 0, n: "int | None" = None) -> np.ndarray:
        """Rows [start, start+n) of matrix i (all rows by default) as float32 (n, L*D), int8 widened."""
        loc = self.locations[i]
        mat = self.read_rows(i, start, loc.rows - start if n is None else n)
        if loc.int8_layers:
            return widen_int8_rows(mat, loc.int8_layers)
        return mat.astype(np.float32, copy=False)

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
