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
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from upmp.data.crops import wrap_crop
from upmp.data.kaldi_dir import DataDirError, c_sort_key, read_table
from upmp.data.layer_stacks import INT8_HEAD
from upmp.data.layout import btld_to_bdlt, split_layers
from upmp.errors import ConfigError
from upmp.train.schema import SAMPLING, check_world_size

logger = logging.getLogger(__name__)


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
    check_world_size(batch_size, world)
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

    def step_rows(self, step: int, rows: range) -> np.ndarray:
        """Indices into self.utts of a step's batch rows: a function of (seed, step) only, so every
        rank and loader worker draws the same global batch and takes its rows of it."""
        return self.draw(np.random.default_rng([self.seed, step]))[rows]

    def step_utterances(self, step: int, rows: range) -> List[str]:
        """The utterance ids of a step's batch rows (what an error about that batch names)."""
        return [self.utts[int(i)] for i in self.step_rows(step, rows)]


def memory_budget() -> int:
    """Bytes `preload` may fill: half of this machine's RAM (the rest for the model, the
    DataLoader's batches in flight and the page cache)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def widen_int8(x: torch.Tensor) -> torch.Tensor:
    """int8 records (B, T, L, 4 + D) uint8 on the CPU -> float32 (B, D, L, T): numpy's transposing cast
    of the codes, then scale and offset in place, 4x faster here than widen_int8_torch's four passes
    over the float32 batch (benchmarks/cache_storage.py), with the same numbers."""
    a = x.numpy()
    head = np.ascontiguousarray(a[..., :INT8_HEAD]).view("<f2").astype(np.float32)  # (B, T, L, 2)
    head = torch.from_numpy(btld_to_bdlt(head))                                     # (B, 2, L, T)
    out = torch.from_numpy(btld_to_bdlt(a[..., INT8_HEAD:].view(np.int8)).astype(np.float32, order="C"))
    return out.mul_(head[:, :1]).add_(head[:, 1:])


def widen_int8_torch(x: torch.Tensor) -> torch.Tensor:
    """widen_int8 in torch ops, on the device x is on (a GPU: the loader moved the bytes only)."""
    head = x[..., :INT8_HEAD].contiguous().view(torch.float16).to(torch.float32)  # (B, T, L, 2)
    x = x[..., INT8_HEAD:].view(torch.int8).to(torch.float32) * head[..., :1] + head[..., 1:]
    return btld_to_bdlt(x).contiguous()


def to_model_input(x: torch.Tensor, device) -> torch.Tensor:
    """A loader batch -> the model's input on `device`.

    Raw stack crops (B, T, L, D) in their stored dtype (float16 or float32), or int8 stacks'
    raw records (B, T, L, 4 + D) uint8 (float16 scale and offset, D int8 codes), move as they
    are and become float32 (B, D, L, T) there, so the widening and the permute run on the
    device, not in the loader; waveform crops (B, S) just move.
    """
    if x.dim() == 4 and x.dtype == torch.uint8:
        return widen_int8(x) if torch.device(device).type == "cpu" else widen_int8_torch(x.to(device, non_blocking=True))
    if x.dim() == 4 and torch.device(device).type == "cpu":  # numpy's strided cast is ~3x torch's here
        return torch.from_numpy(btld_to_bdlt(x.numpy()).astype(np.float32, order="C"))
    x = x.to(device, non_blocking=True)
    if x.dim() == 4:
        x = btld_to_bdlt(x.to(torch.float32)).contiguous()
    return x


class LayerStackCrops(SpeakerSampler):
    """Random fixed-length crops of cached layer stacks with speaker labels.

    raw_batch(step, rank=0, world=1) -> (crops (b, T, L, D) in the stored dtype, labels (b,) int64)
    batch(step, rank=0, world=1)     -> (stacks (b, D, L, T) float32, labels), i.e. to_model_input
                                        of raw_batch on the CPU
    b = batch_size / world. Span-out zeroes spans of frames in every layer (see spanout_frames).

    A crop reads only its own rows of the ark (MatrixReader: one pread per crop, straight into
    the batch buffer); an utterance shorter than the crop is read whole once and wrap-padded.
    `preload` holds every stack in memory instead, and refuses a set larger than
    `preload_budget` bytes (default: half the RAM, memory_budget()).
    """

    def __init__(self, scp: str, utt2spk: str, num_layers: int, crop_frames: int,
                 batch_size: int, seed: int, preload: bool = True, sampling: str = "uniform",
                 spanout_prob: float = 0.0, spanout_span: int = 3, spanout_rate: float = 0.05,
                 preload_budget: Optional[int] = None):
        from upmp.data.layer_stacks import MatrixReader
        entries = read_table(scp)
        spk_of = read_table(utt2spk)
        missing = [u for u in entries if u not in spk_of]
        if missing:
            raise DataDirError(f"{scp}: utterance {missing[0]!r} has no speaker in {utt2spk}")
        super().__init__(list(entries), spk_of, batch_size, seed, sampling)
        self.spanout = (spanout_prob, spanout_span, spanout_rate)
        self.num_layers, self.crop_frames = num_layers, crop_frames
        self.reader = MatrixReader([entries[u] for u in self.utts], source=scp)
        widths = {loc.width for loc in self.reader.locations}
        int8 = {bool(loc.int8_layers) for loc in self.reader.locations}
        for utt, loc in zip(self.utts, self.reader.locations):
            if loc.width % num_layers or len(widths) > 1 or loc.int8_layers not in (0, num_layers):
                raise DataDirError(f"{scp}: utterance {utt}: matrix width {loc.width} is not {num_layers} layers "
                                   f"of one dimension shared by all utterances; re-extract the layer stacks (stage 1)")
            if len(int8) > 1:
                raise DataDirError(f"{scp}: utterance {utt}: int8 and float stacks in one set; re-extract the "
                                   f"layer stacks with one --storage (stage 1)")
        self.dim = widths.pop() // num_layers
        dtypes = {loc.dtype for loc in self.reader.locations}
        self.int8 = int8 == {True}  # crops stay raw int8 records until to_model_input
        self.dtype = np.dtype(np.uint8 if self.int8 else np.float16 if dtypes == {"<f2"} else np.float32)
        self.row_width = num_layers * (self.dim + INT8_HEAD) if self.int8 else num_layers * self.dim
        self._cache: Dict[int, np.ndarray] = {}
        if preload:
            self._preload(scp, preload_budget)

    def _preload(self, scp: str, budget: Optional[int]) -> None:
        need = sum(loc.rows * loc.cols for loc in self.reader.locations) * self.dtype.itemsize
        limit = memory_budget() if budget is None else budget
        if need > limit:
            what = " (half this machine's RAM)" if budget is None else ""
            raise ConfigError(f"train_conf.preload: the layer stacks of {scp} need {need / 2**30:.2f} GiB in memory, "
                              f"over the budget of {limit / 2**30:.2f} GiB{what}; set train_conf.preload false "
                              f"to read crops from disk")
        for i in range(len(self.utts)):
            self._cache[i] = self.reader.read(i).astype(self.dtype, copy=False)

    def _crop(self, i: int, start: int, out: np.ndarray) -> None:
        n = self.crop_frames
        if i in self._cache:
            out[...] = wrap_crop(self._cache[i], start, n)
        elif self.reader.rows(i) >= n:
            self.reader.read_rows(i, start, n, out=out)
        else:  # wrap-padded: the whole (short) stack, once
            out[...] = wrap_crop(self.reader.read(i), start, n)

    def raw_batch(self, step: int, rank: int = 0, world: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = shard(self.batch_size, rank, world)
        index = self.step_rows(step, rows)
        n, LD = self.crop_frames, self.row_width
        if torch.utils.data.get_worker_info() is not None:  # read straight into shared memory: the batch
            out = torch.empty((len(rows), n, LD), dtype=torch.from_numpy(np.empty(0, self.dtype)).dtype)
            mats = out.share_memory_().numpy()  # crosses to the trainer without another copy
        else:  # numpy's allocator maps large buffers with huge pages: ~5x faster to fill than torch.empty
            mats = np.empty((len(rows), n, LD), dtype=self.dtype)
            out = torch.from_numpy(mats)
        for row, (b, i) in enumerate(zip(rows, index)):  # a rank reads only its own rows
            i = int(i)
            start = crop_start(np.random.default_rng([self.seed, step, b]), self.reader.rows(i), n)
            self._crop(i, start, mats[row])
            mats[row, spanout_frames(self.seed, step, b, n, *self.spanout)] = 0
        return split_layers(out, self.num_layers), torch.from_numpy(self.labels[index])

    def batch(self, step: int, rank: int = 0, world: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        x, labels = self.raw_batch(step, rank, world)
        return to_model_input(x, "cpu"), labels


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
        index = self.step_rows(step, rows)
        wavs = np.empty((len(rows), self.crop_samples), dtype=np.float32)
        for row, (b, i) in enumerate(zip(rows, index)):
            rng = np.random.default_rng([self.seed, step, b])
            crop = self._crop(int(i), rng)
            wavs[row] = self.augment(crop, rng) if self.augment is not None else crop
        return torch.from_numpy(wavs), torch.from_numpy(self.labels[index])


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


class ThreadedBatches:
    """Iterates over source.raw_batch(step) (b, T, L, D) for `steps`, built ahead by `threads`
    threads of this process, 2 batches per thread in flight, in parallel with the training step.

    For cached crops: each crop is one preadv (the GIL is released while the kernel copies the
    rows out of the page cache), and the batch stays in this process; a DataLoader worker process
    would hand a batch of 383 MB over through shared memory, ~10x the cost of reading it
    (benchmarks/loader_cached.py). pin_memory: batches come in page-locked memory (for CUDA).
    """

    def __init__(self, source: "LayerStackCrops", steps: range, rank: int = 0, world: int = 1, threads: int = 2,
                 pin_memory: bool = False):
        self.source, self.steps, self.rank, self.world = source, steps, rank, world
        self.threads, self.pin_memory = max(1, threads), pin_memory

    def __len__(self) -> int:
        return len(self.steps)

    def _make(self, step: int):
        x, labels = self.source.raw_batch(step, self.rank, self.world)
        return (x.pin_memory(), labels.pin_memory()) if self.pin_memory else (x, labels)

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor
        steps = iter(self.steps)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="crops") as pool:
            pending = deque(pool.submit(self._make, s) for _, s in zip(range(2 * self.threads), steps))
            while pending:
                batch = pending.popleft().result()
                nxt = next(steps, None)
                if nxt is not None:
                    pending.append(pool.submit(self._make, nxt))
                yield batch


def batch_loader(source, steps: range, rank: int = 0, world: int = 1, num_workers: int = 0,
                 pin_memory: bool = False):
    """The training loop's batches for `steps` (pass each through to_model_input).

    Cached crops (LayerStackCrops) with num_workers > 0: ThreadedBatches, num_workers threads of
    this process. Otherwise (waveform crops: audio decoding holds the GIL) a DataLoader with
    num_workers worker processes (0: built in the loop).
    """
    if isinstance(source, LayerStackCrops) and num_workers > 0:
        return ThreadedBatches(source, steps, rank, world, num_workers, pin_memory)
    return torch.utils.data.DataLoader(StepBatches(source, rank, world), batch_size=None, sampler=steps,
                                       num_workers=num_workers, worker_init_fn=_one_thread,
                                       pin_memory=pin_memory, persistent_workers=False)


class StepBatches(torch.utils.data.Dataset):
    """Step-indexed batches for a torch DataLoader (batch_size=None): workers build
    batches in parallel, each batch still a function of its step. The trainer passes what
    comes out through to_model_input."""

    def __init__(self, source, rank: int = 0, world: int = 1):
        self.source, self.rank, self.world = source, rank, world

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int):
        # raw_batch, where a source has one, leaves the widening and permute to to_model_input
        fetch = getattr(self.source, "raw_batch", self.source.batch)
        return fetch(step, self.rank, self.world)
