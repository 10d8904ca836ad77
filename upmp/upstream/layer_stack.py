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
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List

import numpy as np

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
