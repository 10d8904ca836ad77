"""Cached training crops (upmp.train.data.LayerStackCrops): crop-only reads give the batches of
whole-utterance reads bit for bit, read only the crops' rows, work in DataLoader workers, and
preload refuses a set over its memory budget."""
import pickle

import kaldiio
import numpy as np
import pytest
import torch

from upmp.errors import ConfigError, DataDirError
from upmp.train.data import (LayerStackCrops, StepBatches, ThreadedBatches, batch_loader, memory_budget, spanout_frames,
                             to_model_input, wrap_crop)
from upmp.data.layer_stacks import LayerStackWriter

L, D, CROP, BATCH = 3, 16, 20, 8
# long utterances and wrap-padded short ones (< CROP frames), one exactly CROP long
LENGTHS = {"a-1": 57, "a-2": 7, "a-3": 20, "b-1": 133, "b-2": 12, "c-1": 41, "c-2": 3, "c-3": 90}


def write_set(tmp_path, storage, lengths=LENGTHS, dim=D):
    rng = np.random.default_rng(0)
    prefix = tmp_path / storage
    with LayerStackWriter(str(prefix), storage) as w:
        for utt, t in lengths.items():
            w.write(utt, rng.normal(size=(L, t, dim)).astype(np.float32))
    (tmp_path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(lengths)))
    return str(prefix) + ".scp", str(tmp_path / "utt2spk")


def whole_utterance_batch(crops, scp, step):
    """The batch as the whole-utterance path built it: every row's matrix read whole, cropped,
    stacked as float32, span-out zeroed, reshaped to (B, D, L, T)."""
    entries = dict(kaldiio.load_scp(scp))
    index = crops.draw(np.random.default_rng([crops.seed, step]))
    rows = []
    for b, i in enumerate(index):
        mat = np.asarray(entries[crops.utts[i]])
        start = int(np.random.default_rng([crops.seed, step, b]).random() * max(1, mat.shape[0] - CROP + 1))
        rows.append(wrap_crop(mat, start, CROP))
    mats = np.stack(rows).astype(np.float32)
    for b in range(len(index)):
        mats[b, spanout_frames(crops.seed, step, b, CROP, *crops.spanout)] = 0.0
    stacks = mats.reshape(len(index), CROP, L, D).transpose(0, 3, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(stacks)), torch.from_numpy(crops.labels[index])


@pytest.mark.parametrize("storage", ["float16", "float32", "compressed"])
def test_crop_reads_equal_whole_utterance_reads(tmp_path, storage):
    scp, utt2spk = write_set(tmp_path, storage)
    lazy = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=4, preload=False, spanout_prob=0.5, spanout_rate=0.1)
    held = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=4, preload=True, spanout_prob=0.5, spanout_rate=0.1)
    short_rows = 0
    for step in range(6):
        want, labels = whole_utterance_batch(lazy, scp, step)
        for crops in (lazy, held):
            x, y = crops.batch(step)
            assert x.dtype == torch.float32 and x.shape == (BATCH, D, L, CROP)
            assert torch.equal(x, want) and torch.equal(y, labels)
        raw, _ = lazy.raw_batch(step)
        assert raw.shape == (BATCH, CROP, L, D)
        assert raw.dtype == (torch.float16 if storage == "float16" else torch.float32)  # widened on the device
        short_rows += sum(LENGTHS[lazy.utts[i]] < CROP for i in lazy.draw(np.random.default_rng([4, step])))
    assert short_rows > 0 and (x != 0).any()  # wrap-padded rows were drawn; crops are not empty


def rchar() -> int:
    """Bytes this process has read through read/pread syscalls (the kernel's count)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.parametrize("storage, itemsize", [("float16", 2), ("float32", 4)])
def test_a_crop_reads_only_its_rows(tmp_path, storage, itemsize):
    lengths = {f"s{k % 4}-{k}": t for k, t in enumerate([400, 300, 9, 500, 250, 350, 15, 450] * 2)}
    scp, utt2spk = write_set(tmp_path, storage, lengths, dim=256)
    crops = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=False)
    row_bytes = L * 256 * itemsize
    crops.batch(0)  # first use: file descriptors, lazy imports
    for step in range(1, 5):
        index = crops.draw(np.random.default_rng([0, step]))
        frames = [lengths[crops.utts[i]] for i in index]
        want = sum(min(t, CROP) if t >= CROP else t for t in frames) * row_bytes  # short ones: whole, once
        whole = sum(frames) * row_bytes
        before, kernel_before = crops.reader.bytes_read, rchar()
        crops.batch(step)
        assert crops.reader.bytes_read - before == want
        assert want <= rchar() - kernel_before <= want + 4096 < whole / 4


def test_batches_from_dataloader_workers(tmp_path):
    scp, utt2spk = write_set(tmp_path, "float16")
    crops = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=2, preload=False, spanout_prob=0.3)
    crops.batch(0)  # the parent's descriptors are open before the workers fork
    loader = torch.utils.data.DataLoader(StepBatches(crops), batch_size=None, sampler=range(5), num_workers=2)
    for step, (x, y) in enumerate(loader):
        assert x.dtype == torch.float16
        want, labels = crops.batch(step)
        assert torch.equal(to_model_input(x, "cpu"), want) and torch.equal(y, labels)
    copy = pickle.loads(pickle.dumps(crops))  # spawn-started workers get the reader without descriptors
    assert not copy.reader._fds and torch.equal(copy.batch(3)[0], crops.batch(3)[0])


def test_threaded_batches_in_step_order(tmp_path):
    scp, utt2spk = write_set(tmp_path, "float16")
    crops = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=5, preload=False, spanout_prob=0.3)
    loader = batch_loader(crops, range(3, 12), num_workers=2)
    assert isinstance(loader, ThreadedBatches) and len(loader) == 9
    got = list(loader)
    assert len(got) == 9
    for step, (x, y) in zip(range(3, 12), got):  # every batch kept: no buffer is reused
        want, labels = crops.batch(step)
        assert torch.equal(to_model_input(x, "cpu"), want) and torch.equal(y, labels)
    halves = [next(iter(batch_loader(crops, range(4, 5), rank, 2, num_workers=1))) for rank in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), crops.raw_batch(4)[0])  # DDP ranks: their rows
    assert isinstance(batch_loader(crops, range(2), num_workers=0), torch.utils.data.DataLoader)
    ark = tmp_path / "float16.ark"
    crops = LayerStackCrops(scp, utt2spk, L, CROP, 64, seed=5, preload=False)  # draws the truncated one
    ark.write_bytes(ark.read_bytes()[:-100])  # cut after the reader checked it: a read fails in a thread
    with pytest.raises(DataDirError, match="ark truncated"):  # a thread's error reaches the loop
        list(ThreadedBatches(crops, range(4), threads=2))


def test_to_model_input():
    raw = torch.arange(2 * 3 * 4 * 5, dtype=torch.float16).reshape(2, 3, 4, 5)  # (B, T, L, D)
    x = to_model_input(raw, "cpu")
    assert x.dtype == torch.float32 and x.shape == (2, 5, 4, 3) and x.is_contiguous()
    assert x[1, 4, 2, 0] == raw[1, 0, 2, 4]
    wav = torch.randn(2, 100)
    assert torch.equal(to_model_input(wav, "cpu"), wav)


def test_preload_refuses_a_set_over_the_memory_budget(tmp_path):
    scp, utt2spk = write_set(tmp_path, "float16")
    need = sum(LENGTHS.values()) * L * D * 2
    LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=True, preload_budget=need)
    with pytest.raises(ConfigError) as e:
        LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=True, preload_budget=need - 1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("train_conf.preload: the layer stacks of " + scp)
    assert "set train_conf.preload false" in msg
    LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=False, preload_budget=0)  # no preload, no limit
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert memory_budget() == pytest.approx(total_kib * 1024 / 2, rel=0.01)


def test_bad_stack_files(tmp_path):
    scp, utt2spk = write_set(tmp_path, "float32")
    with pytest.raises(DataDirError, match=r"utterance a-1: matrix width 48 is not 5 layers"):
        LayerStackCrops(scp, utt2spk, 5, CROP, BATCH, seed=0, preload=False)
    ark = tmp_path / "float32.ark"
    data = ark.read_bytes()
    ark.write_bytes(data[:-100])  # the last matrix loses rows: refused when the reader opens it
    with pytest.raises(DataDirError, match=rf"float32.ark:\d+': {ark} is truncated \(the matrix ends at byte "
                                           rf"{len(data)}, the file at {len(data) - 100}\); re-extract"):
        LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=False)
    ark.write_bytes(data)
    crops = LayerStackCrops(scp, utt2spk, L, CROP, BATCH, seed=0, preload=False)
    ark.write_bytes(data[:-100])  # and cut later, while training: the read says so
    last = crops.utts.index("c-3")
    with pytest.raises(DataDirError, match=r"float32.ark:\d+: ark truncated \(\d+ of \d+ bytes\); re-extract"):
        crops.reader.read(last)
