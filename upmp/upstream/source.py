"""Where layer stacks come from: cached by stage 1, or computed by an upstream from audio.

    source = CachedStacks("dump/ge2e/test/layers.scp")                # meta from layer_stack.json
    source = UpstreamStacks(upstream, "data/test", "ge2e", device)    # the upstream run here
    source.utts, source.meta, source.where                            # ids, LayerStackMeta, what messages name
    for stack in source.stacks(utts): ...                             # (L, T, D) float32, in order
    source.for_set("data/dev")                                        # the same kind, meta, upstream

Training, validation, stage 3 and the inference API read stacks through these. `run_upstream` is
the one place an upstream turns waveforms into (L, T, D) stacks outside the training loop (the
loop keeps its batched call on waveform crops, with gradients when the upstream trains:
upmp.train.trainer.TrainGraph).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from upmp.data.layer_stacks import LayerStackMeta, load_stack
from upmp.data.layout import dlt_to_ltd
from upmp.errors import DataDirError


def run_upstream(upstream, wavs: Sequence[np.ndarray], device="cpu", layers: Optional[List[int]] = None
                 ) -> List[np.ndarray]:
    """(N_i,) float32 waveforms, zero-padded into one batch and run through the upstream in one
    forward -> their (L, T_i, D) float32 stacks, each cut to its own frame count. layers: the
    hidden states to keep (None: what the upstream returns). One waveform per call gives features
    independent of batching (padding is not neutral for every upstream)."""
    import torch
    lens = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lens.max()))
    for row, wav in enumerate(wavs):
        batch[row, :len(wav)] = torch.from_numpy(wav)
    with torch.no_grad():
        stack, frames = upstream(batch.to(device), lens.to(device))
    if layers is not None:
        stack = stack[:, :, layers]
    stack = stack.float().cpu().numpy()  # (B, D, L, T)
    return [dlt_to_ltd(stack[row, :, :, :int(frames[row])]) for row in range(len(wavs))]


class LayerStackSource(abc.ABC):
    """Layer stacks of a set of utterances: their ids, what the stacks are (meta), the stacks."""

    meta: LayerStackMeta
    where: str  # what messages name: the layers.scp, or the data dir

    @property
    @abc.abstractmethod
    def utts(self) -> List[str]:
        """The utterance ids, in the source's order."""

    @abc.abstractmethod
    def stacks(self, utts: Sequence[str]) -> Iterator[np.ndarray]:
        """The (L, T, D) float32 stacks of `utts`, in that order, one at a time."""

    @abc.abstractmethod
    def for_set(self, where: str) -> "LayerStackSource":
        """The same kind of source, with the same meta, over another set (a layers.scp or a data
        dir): e.g. the validation set's stacks as the training set's."""


class CachedStacks(LayerStackSource):
    """Stage 1's stacks: <dir>/layers.scp, with layer_stack.json beside it (unless `meta` is given,
    e.g. a validation set's stacks, read as the training set's)."""

    def __init__(self, scp: str, meta: Optional[LayerStackMeta] = None):
        self.where = str(scp)
        if meta is None:
            try:
                meta = LayerStackMeta.read(str(Path(scp).parent))
            except FileNotFoundError as e:  # its message names the file and stage 1
                raise DataDirError(str(e)) from None
        self.meta = meta
        self._entries: Optional[Dict[str, str]] = None

    @property
    def entries(self) -> Dict[str, str]:
        """{utt: ark entry} of the scp (read on first use)."""
        if self._entries is None:
            from upmp.data.kaldi_dir import read_table
            self._entries = read_table(self.where)
        return self._entries

    @property
    def utts(self) -> List[str]:
        return list(self.entries)

    def stacks(self, utts: Sequence[str]) -> Iterator[np.ndarray]:
        for utt in utts:
            yield load_stack(self.entries[utt], self.meta.num_layers)

    def for_set(self, where: str) -> "CachedStacks":
        return CachedStacks(where, self.meta)


class UpstreamStacks(LayerStackSource):
    """Stacks of a Kaldi data dir's audio, computed by `upstream` (named `name`) one utterance per
    forward, in eval mode and without gradients (a trained upstream goes back to its mode after).
    Audio shorter than the upstream's receptive field is a logged warning (test data)."""

    def __init__(self, upstream, data_dir: str, name: str, device="cpu", data=None):
        self.upstream, self.where, self.device, self._data = upstream, str(data_dir), device, data
        self.meta = LayerStackMeta(upstream.num_layers, upstream.dim, upstream.frame_shift, name,
                                   layers=upstream.kept_layers)

    @property
    def data(self):
        """The data dir (upmp.data.kaldi_dir.DataDir; loaded on first use)."""
        if self._data is None:
            from upmp.data.kaldi_dir import DataDir
            self._data = DataDir.load(self.where)
        return self._data

    @property
    def utts(self) -> List[str]:
        return self.data.utts

    def stacks(self, utts: Sequence[str]) -> Iterator[np.ndarray]:
        from upmp.data.audio import MIN_SAMPLES, load_utterance
        for utt in utts:
            wav = load_utterance(self.data, utt, f"{self.where}/wav.scp", min_samples=MIN_SAMPLES, strict=False)
            was_training = self.upstream.training  # eval for this call only: nothing is left switched while
            self.upstream.eval()                    # the caller holds the generator (a fine-tuned upstream trains)
            try:
                stack = run_upstream(self.upstream, [wav], self.device)[0]
            finally:
                self.upstream.train(was_training)
            yield stack

    def for_set(self, where: str) -> "UpstreamStacks":
        return UpstreamStacks(self.upstream, where, self.meta.upstream, self.device)
