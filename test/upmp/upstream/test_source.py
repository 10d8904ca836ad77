"""Layer-stack sources (upmp.upstream.source): run_upstream against a fake upstream whose output
is known in closed form, CachedStacks over the `dump` fixture, UpstreamStacks over a data dir."""
from typing import Tuple

import numpy as np
import pytest
import torch

from upmp.data.layer_stacks import LayerStackMeta, load_stack
from upmp.errors import DataDirError, UpmpError
from upmp.upstream.base import Upstream
from upmp.upstream.source import CachedStacks, UpstreamStacks, run_upstream

HOP = 160


class FrameMeans(Upstream):
    """stack[b, d, l, t] = (l + 1) * mean of samples [t*HOP, (t+1)*HOP) of row b + d, over the padded
    batch (so padding shows where a row is longer than its waveform); frames = ceil(N / HOP)."""
    num_layers, dim, frame_shift = 3, 2, HOP / 16000

    def __init__(self):
        super().__init__()
        self.modes = []  # self.training at each forward
        self.w = torch.nn.Parameter(torch.ones(()))

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.modes.append(self.training)
        T = (wavs.shape[1] + HOP - 1) // HOP
        x = torch.nn.functional.pad(wavs, (0, T * HOP - wavs.shape[1])).reshape(len(wavs), T, HOP).mean(-1)
        stack = torch.stack([torch.stack([(l + 1) * x + d for l in range(3)], 1)
                             for d in range(self.dim)], 1)  # (B, D, L, T)
        return stack * self.w, (wav_lens + HOP - 1) // HOP


def expected(wav: np.ndarray, layers=(0, 1, 2)) -> np.ndarray:
    T = (len(wav) + HOP - 1) // HOP
    means = np.pad(wav.astype(np.float64), (0, T * HOP - len(wav))).reshape(T, HOP).mean(1)
    return np.stack([np.stack([(l + 1) * means + d for d in range(2)], 1) for l in layers])  # (L, T, D)


def test_run_upstream_cuts_each_row_to_its_frames_and_keeps_layers():
    rng = np.random.default_rng(0)
    wavs = [rng.normal(size=n).astype(np.float32) for n in (1000, 480, 161)]
    alone = [run_upstream(FrameMeans(), [w])[0] for w in wavs]
    for wav, got in zip(wavs, alone):
        assert got.dtype == np.float32 and got.shape == (3, (len(wav) + HOP - 1) // HOP, 2)
        np.testing.assert_allclose(got, expected(wav), rtol=1e-5, atol=1e-6)
    batched = run_upstream(FrameMeans(), wavs, layers=[0, 2])
    for wav, got in zip(wavs, batched):  # zero padding is neutral for this upstream: the same frames
        np.testing.assert_allclose(got, expected(wav, [0, 2]), rtol=1e-5, atol=1e-6)
    up = FrameMeans().set_trainable(True)
    run_upstream(up, wavs[:1])
    assert up.w.grad is None  # no graph was built


def test_cached_stacks(dump):
    scp = dump / "dump/layers.scp"
    source = CachedStacks(str(scp))
    assert source.meta == LayerStackMeta(3, 8, 0.02, "test") and source.where == str(scp)
    entries = dict(line.split() for line in scp.read_text().splitlines())
    assert source.utts == list(entries)  # the scp's order
    utts = source.utts[::-2]
    for utt, got in zip(utts, source.stacks(utts)):
        np.testing.assert_array_equal(got, load_stack(entries[utt], 3))
    other = source.for_set(str(scp))
    assert isinstance(other, CachedStacks) and other.meta is source.meta
    (dump / "dump/layer_stack.json").unlink()
    with pytest.raises(DataDirError, match="layer_stack.json: missing; extract layer stacks first"):
        CachedStacks(str(scp))
    assert CachedStacks(str(scp), source.meta).utts == list(entries)  # a given meta: no json needed


def test_upstream_stacks(small_data_dir):
    from upmp.data.audio import load_audio
    from upmp.data.kaldi_dir import DataDir
    up = FrameMeans().keep_layers([1, 2]).set_trainable(True)
    up.train()
    source = UpstreamStacks(up, str(small_data_dir), "frames")
    data = DataDir.load(small_data_dir)
    assert source.utts == data.utts and source.where == str(small_data_dir)
    assert source.meta == LayerStackMeta(2, 2, HOP / 16000, "frames", layers=[1, 2])
    utts = data.utts[:3]
    for utt, got in zip(utts, source.stacks(utts)):
        np.testing.assert_allclose(got, expected(load_audio(data.wav_scp[utt]), [1, 2]), rtol=1e-5, atol=1e-6)
    assert up.modes == [False] * 3 and up.training  # eval while computing, its own mode after
    held = source.stacks(utts)
    next(held)
    assert up.training  # a generator the caller holds leaves the upstream in its own mode between stacks
    held.close()
    other = source.for_set(str(small_data_dir))
    assert other.upstream is up and other.meta == source.meta
    (small_data_dir / "wav" / f"{utts[0]}.wav").unlink()
    with pytest.raises(UpmpError, match=f"{small_data_dir}/wav.scp"):  # audio errors name the data dir's wav.scp
        list(source.stacks(utts[:1]))
    assert up.training
