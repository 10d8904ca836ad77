"""Layer stacks: all hidden states of a frozen upstream, and their Kaldi ark storage.

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
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from upmp.data.kaldi_dir import atomic_write_text

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
    """Write (L, T, D) stacks into `<prefix>.ark` / `<prefix>.scp`."""

    def __init__(self, prefix: str, storage: str = "float32"):
        import kaldiio
        if storage not in STORAGE_TYPES:
            raise ValueError(f"storage must be one of {STORAGE_TYPES}, got {storage!r}")
        self.storage = storage
        kwargs = {}
        if storage == "compressed":
            kwargs["compression_method"] = 2  # kSpeechFeature: per-column 8-bit with 16-bit headers
        elif storage == "float16":
            kwargs["write_function"] = "numpy"
        self._writer = kaldiio.WriteHelper(f"ark,scp:{prefix}.ark,{prefix}.scp", **kwargs)

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


class LayerStackExtractor(torch.nn.Module):
    """A frozen upstream that returns every hidden state.

    forward(wavs (B, N) float, wav_lens (B,)) -> (stack (B, D, L, T), lengths (B,))

    Frame counts follow S3PRL: ceil(N / 320) for a 20 ms upstream. Padding
    is not neutral for these models: the Base models' first CNN layer
    normalises each channel over the whole (padded) input, so a batched
    utterance gets slightly different features than alone. Extraction
    therefore runs one utterance per forward unless a batch size is asked for.
    """

    def __init__(self, name: str, ckpt: Optional[str] = None):
        super().__init__()
        from s3prl.nn import S3PRLUpstream
        if name.endswith("_local") and not ckpt:
            raise ValueError(f"upstream {name!r} needs --upstream_ckpt <path>")
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"upstream checkpoint not found: {ckpt}")
        self.name = name
        self.upstream = S3PRLUpstream(name, path_or_url=ckpt)
        self.upstream.eval()  # S3PRLUpstream is built in train mode (dropout on)
        for p in self.upstream.parameters():
            p.requires_grad_(False)
        self.num_layers = self.upstream.num_layers
        self.dim = self.upstream.hidden_sizes[-1]
        rates = set(self.upstream.downsample_rates)
        if len(rates) != 1 or len(set(self.upstream.hidden_sizes)) != 1:
            raise ValueError(f"upstream {name!r} has layers of unequal rate/width; a layer stack needs one")
        self.frame_shift = rates.pop() / 16000.0

    def train(self, mode: bool = True):
        super().train(mode)
        self.upstream.eval()  # frozen extractor: always eval
        return self

    @torch.no_grad()
    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, hidden_lens = self.upstream(wavs, wav_lens)
        stack = torch.stack(hidden, dim=2)  # (B, T, L, D)
        return stack.permute(0, 3, 2, 1).contiguous(), hidden_lens[0]


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
