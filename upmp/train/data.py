"""Training batches of random layer-stack crops from cached (extracted) stacks.

Batch composition depends only on (seed, step), never on the process history,
so a run resumed from a checkpoint sees exactly the batches the uninterrupted
run would have seen.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import numpy as np
import torch

from upmp.data.kaldi_dir import DataDirError, c_sort_key, read_table

logger = logging.getLogger(__name__)


def wrap_crop(mat: np.ndarray, start: int, length: int) -> np.ndarray:
    """Rows [start, start+length) of mat (T, F), wrapping around when T < length."""
    T = mat.shape[0]
    if T >= length:
        return mat[start:start + length]
    return mat[np.arange(start, start + length) % T]


SAMPLING = ("uniform", "speaker_balanced")


class LayerStackCrops:
    """Random fixed-length crops of cached layer stacks with speaker labels.

    batch(step) -> (stacks (B, D, L, T) float32, labels (B,) int64)

    sampling: "uniform" over utterances, or "speaker_balanced" (a speaker uniformly,
    then one of its utterances). Span-out (method.md): with probability spanout_prob
    an utterance's crop has spans of `spanout_span` frames zeroed in every layer,
    each frame starting a span with probability spanout_rate.
    """

    def __init__(self, scp: str, utt2spk: str, num_layers: int, crop_frames: int,
                 batch_size: int, seed: int, preload: bool = True, sampling: str = "uniform",
                 spanout_prob: float = 0.0, spanout_span: int = 3, spanout_rate: float = 0.05):
        import kaldiio
        entries = read_table(scp)
        spk_of = read_table(utt2spk)
        missing = [u for u in entries if u not in spk_of]
        if missing:
            raise DataDirError(f"{scp}: utterance {missing[0]!r} has no speaker in {utt2spk}")
        self.utts: List[str] = sorted(entries, key=c_sort_key)
        self.speakers: List[str] = sorted({spk_of[u] for u in self.utts}, key=c_sort_key)
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        self.labels = np.array([spk_index[spk_of[u]] for u in self.utts], dtype=np.int64)
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.sampling = sampling
        self.spanout = (spanout_prob, spanout_span, spanout_rate)
        self._by_speaker = [np.flatnonzero(self.labels == k) for k in range(len(self.speakers))]
        self.num_layers, self.crop_frames = num_layers, crop_frames
        self.batch_size, self.seed = batch_size, seed
        self._entries = [entries[u] for u in self.utts]
        self._cache: Dict[int, np.ndarray] = {}
        self._load = kaldiio.load_mat
        if preload:
            for i in range(len(self.utts)):
                self._cache[i] = self._read(i)

    def _read(self, i: int) -> np.ndarray:
        return np.asarray(self._load(self._entries[i]))

    def _matrix(self, i: int) -> np.ndarray:
        return self._cache[i] if i in self._cache else self._read(i)

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        if self.sampling == "uniform":
            index = rng.integers(len(self.utts), size=self.batch_size)
        else:
            spk = rng.integers(len(self.speakers), size=self.batch_size)
            index = np.array([rng.choice(self._by_speaker[k]) for k in spk])
        crops = []
        for i in index:
            mat = self._matrix(int(i))
            start = int(rng.integers(max(1, mat.shape[0] - self.crop_frames + 1)))
            crops.append(wrap_crop(mat, start, self.crop_frames))
        mats = np.stack(crops).astype(np.float32)  # (B, T, L*D)
        prob, span, rate = self.spanout
        if prob > 0:
            for b in np.flatnonzero(rng.random(self.batch_size) < prob):
                starts = np.flatnonzero(rng.random(self.crop_frames) < rate)
                drop = (starts[:, None] + np.arange(span)[None]).ravel()
                mats[b, drop[drop < self.crop_frames]] = 0.0
        B, T, LD = mats.shape
        stacks = mats.reshape(B, T, self.num_layers, LD // self.num_layers).transpose(0, 3, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(stacks)), torch.from_numpy(self.labels[index])

