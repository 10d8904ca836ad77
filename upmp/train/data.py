"""Training batches: random fixed-length crops with speaker labels, from cached layer
stacks (LayerStackCrops) or straight from audio (WaveformCrops, the online mode).

Batch composition depends only on (seed, step), never on the process history,
so a run resumed from a checkpoint sees exactly the batches the uninterrupted
run would have seen: the step's generator draws the utterances, each row's own
generator (seed, step, row) its crop, span-out and augmentation. Under
DistributedDataParallel, rank r of w takes rows [r*B/w, (r+1)*B/w) of the same
global batch and reads only those, so w processes together see the batches one
process would.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from upmp.data.crops import wrap_crop
from upmp.data.kaldi_dir import DataDirError, c_sort_key, read_table

logger = logging.getLogger(__name__)

SAMPLING = ("uniform", "speaker_balanced")


def spanout_frames(seed: int, step: int, item: int, n_frames: int, prob: float, span: int,
                   rate: float) -> np.ndarray:
    """Span-out (method.md) of one batch item: the frames to zero in every layer. With
    probability `prob` the item gets spans of `span` frames, each frame starting a span
    with probability `rate`; a function of (seed, step, item) only."""
    if prob <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, step, item, 1])
    if rng.random() >= prob:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(rng.random(n_frames) < rate)
    drop = (starts[:, None] + np.arange(span)[None]).ravel()
    return np.unique(drop[drop < n_frames])


def crop_start(rng: np.random.Generator, length: int, crop: int) -> int:
    """A uniform start for a crop of `crop` out of `length` (0 when the crop wraps around)."""
    return int(rng.random() * max(1, length - crop + 1))


def shard(batch_size: int, rank: int, world: int) -> range:
    """The global batch rows one DDP rank trains on."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
    per = batch_size // world
    return range(rank * per, (rank + 1) * per)


class SpeakerSampler:
    """Utterances sorted in C order, speaker labels, and the per-step draw of batch rows.

    sampling: "uniform" over utterances, or "speaker_balanced" (a speaker uniformly,
    then one of its utterances).
    """

    def __init__(self, utts: List[str], spk_of: Dict[str, str], batch_size: int, seed: int,
                 sampling: str = "uniform"):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.utts: List[str] = sorted(utts, key=c_sort_key)
        self.speakers: List[str] = sorted({spk_of[u] for u in self.utts}, key=c_sort_key)
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        self.labels = np.array([spk_index[spk_of[u]] for u in self.utts], dtype=np.int64)
        self.sampling, self.batch_size, self.seed = sampling, batch_size, seed
        self._by_speaker = [np.flatnonzero(self.labels == k) for k in range(len(self.speakers))]

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.sampling == "uniform":
            return rng.integers(len(self.utts), size=self.batch_size)
        spk = rng.integers(len(self.speakers), size=self.batch_size)
        return np.array([rng.choice(self._by_speaker[k]) for k in spk])


class LayerStackCrops(SpeakerSampler):
    """Random fixed-length crops of cached layer stacks with speaker labels.

    batch(step, rank=0, world=1) -> (stacks (b, D, L, T) float32, labels (b,) int64),
    b = batch_size / world. Span-out zeroes spans of frames in every layer (see spanout_frames).
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
        super().__init__(list(entries), spk_of, batch_size, seed, sampling)
        self.spanout = (spanout_prob, spanout_span, spanout_rate)
        self.num_layers, self.crop_frames = num_layers, crop_frames
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

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = shard(self.batch_size, rank, world)
        index = self.draw(np.random.default_rng([self.seed, step]))[rows]
        crops = []
        for b, i in zip(rows, index):  # a rank reads only its own rows
            mat = self._matrix(int(i))
            start = crop_start(np.random.default_rng([self.seed, step, b]), mat.shape[0], self.crop_frames)
            crops.append(wrap_crop(mat, start, self.crop_frames))
        mats = np.stack(crops).astype(np.float32)  # (b, T, L*D)
        for row, b in enumerate(rows):
            mats[row, spanout_frames(self.seed, step, b, self.crop_frames, *self.spanout)] = 0.0
        n, T, LD = mats.shape
        stacks = mats.reshape(n, T, self.num_layers, LD // self.num_layers).transpose(0, 3, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(stacks)), torch.from_numpy(self.labels[index])


class WaveformCrops(SpeakerSampler):
    """Random fixed-length waveform crops of a Kaldi data dir, for online training (the
    upstream runs on them inside the training loop).

    batch(step, rank=0, world=1) -> (wavs (b, crop_samples) float32 at 16 kHz, labels (b,) int64)

    Each row is a function of (seed, step, row): the utterance comes from the step's draw,
    the crop start and the augmentation from the row's own generator, so a rank decodes
    only its own rows. Short utterances wrap around. A wav / flac file decodes only its crop
    (upmp.data.audio.read_utterance_crop; the same samples as cutting the whole decode);
    utterances shorter than `min_samples` (the upstream's receptive field) are an error.
    `augment`, when given, maps (samples, rng) -> samples of the same length
    (upmp.data.augment.Augmenter).
    """

    def __init__(self, data_dir: str, crop_samples: int, batch_size: int, seed: int,
                 sampling: str = "uniform", preload: bool = False,
                 augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
                 min_samples: Optional[int] = None):
        from upmp.data.audio import MIN_SAMPLES
        from upmp.data.kaldi_dir import DataDir
        self.data_dir = data_dir
        self.data = DataDir.load(data_dir)
        super().__init__(self.data.utts, self.data.utt2spk, batch_size, seed, sampling)
        self.crop_samples, self.augment = crop_samples, augment
        self.min_samples = MIN_SAMPLES if min_samples is None else min_samples
        self._source = f"{self.data_dir}/wav.scp"
        self._cache: Dict[int, np.ndarray] = {}
        if preload:
            from tqdm import tqdm
            for i in tqdm(range(len(self.utts)), desc="preload audio", mininterval=5):
                self._cache[i] = self._read(i)

    def _read(self, i: int) -> np.ndarray:
        from upmp.data.audio import load_utterance
        return load_utterance(self.data, self.utts[i], self._source, min_samples=self.min_samples)

    def _crop(self, i: int, rng: np.random.Generator) -> np.ndarray:
        if i in self._cache:
            wav = self._cache[i]
            return wrap_crop(wav, crop_start(rng, len(wav), self.crop_samples), self.crop_samples)
        from upmp.data.audio import read_utterance_crop
        return read_utterance_crop(self.data, self.utts[i], self.crop_samples,
                                   lambda n: crop_start(rng, n, self.crop_samples), self._source,
                                   min_samples=self.min_samples)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = shard(self.batch_size, rank, world)
        index = self.draw(np.random.default_rng([self.seed, step]))[rows]
        wavs = np.empty((len(rows), self.crop_samples), dtype=np.float32)
        for row, (b, i) in enumerate(zip(rows, index)):
            rng = np.random.default_rng([self.seed, step, b])
            crop = self._crop(int(i), rng)
            wavs[row] = self.augment(crop, rng) if self.augment is not None else crop
        return torch.from_numpy(wavs), torch.from_numpy(self.labels[index])


class StepBatches(torch.utils.data.Dataset):
    """Step-indexed batches for a torch DataLoader (batch_size=None): workers build
    batches in parallel, each batch still a function of its step."""

    def __init__(self, source, rank: int = 0, world: int = 1):
        self.source, self.rank, self.world = source, rank, world

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.source.batch(step, self.rank, self.world)
