"""Cached-mode training loader at the paper's size: crop-only reads vs whole-utterance reads vs
the raw sequential read of the same bytes.

    python benchmarks/loader_cached.py [--small] [--utts 256] [--batch 128] [--repeats 5]

A synthetic float16 layer-stack set in a temporary directory: WavLM Base+-shaped stacks
(13 hidden states x 768, 50 frames/s), utterance lengths uniform in 4-12.4 s (8.2 s mean, as
VoxCeleb1), written by LayerStackWriter. A batch is 128 crops of 3 s (150 frames). Measured
in this process, medians over --repeats batches (different steps), from the page cache:
  ours        LayerStackCrops.raw_batch: each crop one preadv of its rows (what a worker does)
  ours+cpu    LayerStackCrops.batch: the same plus float32 + permute on the CPU (no device)
  worker      ours through a 1-worker DataLoader: seconds between batches, the hand-over to
              the trainer through shared memory included
  whole       the earlier path, kept here as the baseline: every row's matrix read whole with
              kaldiio, cropped, stacked as float32 in numpy, permuted
  sequential  one read of the crops' byte count from the start of the ark (the limit)
Bytes read are the kernel's count for this process (/proc/self/io rchar). Then the trainer's
view with train_conf.num_workers=2 (2 threads, as train uses, and 2 DataLoader worker processes):
the fraction of step time spent waiting for a batch, for
a CPU step of this machine (the UPMP backend forward+backward at --cpu_batch rows, a lower
bound of the paper's batch of 128) and for a GPU-like step of 0.2 s (a sleep: the CPU is free).
Prints Markdown on stdout; the 2-core machine is shared, so figures are noisy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upmp.train.data import (LayerStackCrops, StepBatches, ThreadedBatches, crop_start,  # noqa: E402
                             spanout_frames, to_model_input, wrap_crop)
from upmp.data.layer_stacks import LayerStackWriter  # noqa: E402

FPS, L, D = 50, 13, 768


def rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def whole_utterance_batch(crops: LayerStackCrops, entries, step: int):
    """The earlier LayerStackCrops.batch: whole matrices through kaldiio, cropped and converted in numpy."""
    import kaldiio
    index = crops.draw(np.random.default_rng([crops.seed, step]))
    rows = []
    for b, i in enumerate(index):
        mat = np.asarray(kaldiio.load_mat(entries[i]))
        start = crop_start(np.random.default_rng([crops.seed, step, b]), mat.shape[0], crops.crop_frames)
        rows.append(wrap_crop(mat, start, crops.crop_frames))
    mats = np.stack(rows).astype(np.float32)
    for b in range(len(index)):
        mats[b, spanout_frames(crops.seed, step, b, crops.crop_frames, *crops.spanout)] = 0.0
    n, T, LD = mats.shape
    stacks = mats.reshape(n, T, L, LD // L).transpose(0, 3, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(stacks)), torch.from_numpy(crops.labels[index])


def sequential_read(path: str, nbytes: int) -> np.ndarray:
    """nbytes from the start of the file into a fresh buffer, in 16 MiB preads."""
    buf = np.empty(nbytes, dtype=np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        view, pos, chunk = memoryview(buf), 0, 16 << 20
        while pos < nbytes:
            pos += os.preadv(fd, [view[pos:pos + chunk]], pos)
    finally:
        os.close(fd)
    return buf


def measure(fn, steps):
    """(median seconds, median bytes read) of fn(step) over steps."""
    secs, reads = [], []
    for step in steps:
        r0, t0 = rchar(), time.perf_counter()
        fn(step)
        secs.append(time.perf_counter() - t0)
        reads.append(rchar() - r0)
    return statistics.median(secs), statistics.median(reads)


def write_set(directory: Path, n_utts: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(4 * FPS, int(12.4 * FPS) + 1, size=n_utts)
    pool = rng.standard_normal(int(frames.max() + 64) * L * D, dtype=np.float32).astype(np.float16)
    with LayerStackWriter(str(directory / "layers"), "float16") as w:
        for k, t in enumerate(frames):
            off = int(rng.integers(64)) * L * D
            mat = pool[off:off + t * L * D].reshape(t, L, D)
            w.write(f"spk{k % 40:03d}-utt{k:05d}", mat.transpose(1, 0, 2))
    (directory / "utt2spk").write_text("".join(f"spk{k % 40:03d}-utt{k:05d} spk{k % 40:03d}\n"
                                               for k in sorted(range(n_utts), key=lambda k: (k % 40, k))))
    return directory / "layers.scp", directory / "utt2spk", frames


def cpu_step(batch: int, crop: int):
    """A callable running one UPMP backend forward+backward with the AAM head on (batch, D, L, crop)."""
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.losses import build_loss
    from upmp.train.schema import defaults
    torch.manual_seed(0)
    model = SpeakerEmbeddingModel("upmp", D, L, use_hidden0=False,
                                  backend_conf={"conv_dim": 128, "n_blocks": 1, "heads": 4, "embed_dim": 192})
    head = build_loss("aamsoftmax", model.embed_dim, 1211, defaults().loss_conf)  # margin 0.2, scale 30
    x = torch.randn(batch, D, L, crop)
    y = torch.randint(1211, (batch,))

    def step():
        loss, _ = head(model(x), y)
        loss.backward()
    return step


def trainer_wait(crops: LayerStackCrops, step_fn, n_steps: int, workers: int = 2, threads: bool = False):
    """(fraction of wall time spent waiting for batches, median step seconds) over n_steps after the
    first, with batches from `workers` DataLoader worker processes or (threads) ThreadedBatches."""
    if threads:
        loader = ThreadedBatches(crops, range(n_steps + 1), threads=workers)
    else:
        loader = torch.utils.data.DataLoader(StepBatches(crops), batch_size=None, sampler=range(n_steps + 1),
                                             num_workers=workers, worker_init_fn=lambda _: torch.set_num_threads(1))
    waits, steps = [], []
    it = iter(loader)
    x, _ = next(it)  # the workers' start-up is not a steady-state wait
    step_fn(x)
    for _ in range(n_steps):
        t0 = time.perf_counter()
        x, _ = next(it)
        t1 = time.perf_counter()
        step_fn(x)
        waits.append(t1 - t0)
        steps.append(time.perf_counter() - t1)
    trainer_wait.last_wall = statistics.median(np.add(waits, steps))
    return sum(waits) / (sum(waits) + sum(steps)), statistics.median(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a quick run: 48 utterances, batch 32, 3 repeats")
    p.add_argument("--utts", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--crop_seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait_steps", type=int, default=5, help="steps of the 2-worker trainer measurement")
    p.add_argument("--cpu_batch", type=int, default=8, help="rows of the measured CPU backend step")
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args()
    if args.small:
        args.utts, args.batch, args.repeats, args.wait_steps, args.cpu_batch = 48, 32, 3, 4, 2
    crop = int(round(args.crop_seconds * FPS))
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        print(f"writing {args.utts} synthetic float16 stacks ...", file=sys.stderr)
        scp, utt2spk, frames = write_set(Path(tmp), args.utts)
        ark = str(Path(tmp) / "layers.ark")
        ark_bytes = os.path.getsize(ark)
        sequential_read(ark, ark_bytes)  # into the page cache
        crops = LayerStackCrops(str(scp), str(utt2spk), L, crop, args.batch, seed=0, preload=False)
        entries = crops.reader.entries
        crop_bytes = args.batch * crop * L * D * 2
        steps = range(1, args.repeats + 1)
        crops.raw_batch(0)
        print("timing batch production ...", file=sys.stderr)
        t_ours, b_ours = measure(crops.raw_batch, steps)
        t_cpu, _ = measure(crops.batch, steps)
        t_whole, b_whole = measure(lambda s: whole_utterance_batch(crops, entries, s), steps)
        t_seq, b_seq = measure(lambda s: sequential_read(ark, crop_bytes), steps)
        assert torch.equal(crops.batch(3)[0], whole_utterance_batch(crops, entries, 3)[0])

        print("timing one DataLoader worker ...", file=sys.stderr)
        frac_one, _ = trainer_wait(crops, lambda x: None, args.repeats, workers=1)
        t_worker = trainer_wait.last_wall
        print("timing the trainer with 2 workers ...", file=sys.stderr)
        torch.set_num_threads(2)
        backend_step = cpu_step(args.cpu_batch, crop)
        backend_step()
        cpu_fn = lambda x: (to_model_input(x, "cpu"), backend_step())  # noqa: E731
        gpu_fn = lambda x: time.sleep(0.2)  # noqa: E731
        waits = {}
        for threads in (True, False):
            waits[threads] = (trainer_wait(crops, cpu_fn, args.wait_steps, threads=threads),
                              trainer_wait(crops, gpu_fn, max(args.wait_steps, 10), threads=threads)[0])
        t_step = statistics.median([waits[True][0][1], waits[False][0][1]])
        projected_step = t_step * args.batch / args.cpu_batch

    mb = 1e6
    print(f"### Cached loader (`benchmarks/loader_cached.py{' --small' if args.small else ''}`)\n")
    print(f"{args.utts} float16 stacks {L} x {D} at {FPS} fps, {frames.mean() / FPS:.1f} s mean "
          f"({ark_bytes / 1e9:.2f} GB ark, page cache); batch {args.batch} crops of {crop} frames "
          f"({crop_bytes / mb:.0f} MB of crops); medians of {args.repeats} batches.\n")
    print("| path | s / batch | MB read / batch | read / crop bytes | time vs sequential |")
    print("|---|---:|---:|---:|---:|")
    for name, t, b in (("ours: crop rows only (raw float16, a worker's work)", t_ours, b_ours),
                       ("ours + float32 and permute on the CPU", t_cpu, b_ours),
                       ("whole-utterance reads (earlier code path, baseline)", t_whole, b_whole),
                       ("sequential read of the crops' bytes (limit)", t_seq, b_seq)):
        if name.startswith("whole"):
            print(f"| ours in 1 DataLoader worker, incl. the shared-memory hand-over | {t_worker:.3f} | "
                  f"{b_ours / mb:.0f} | {b_ours / crop_bytes:.3f}x | {t_worker / t_seq:.2f}x |")
        print(f"| {name} | {t:.3f} | {b / mb:.0f} | {b / crop_bytes:.3f}x | {t / t_seq:.2f}x |")
    print()
    print(f"- speed-up over whole-utterance reads: {t_whole / t_ours:.1f}x (batch production), "
          f"bytes read {b_whole / b_ours:.1f}x fewer")
    print(f"- bytes read per batch: {b_ours / crop_bytes:.3f}x the crops' bytes (target <= 1.05x)")
    print(f"- batch production per worker: {t_ours / t_seq:.2f}x the sequential read of the same bytes "
          f"(target <= 1.5x)")
    print(f"- trainer's input wait, 2 workers; CPU step = UPMP forward+backward at batch {args.cpu_batch}, "
          f"{t_step:.2f} s/step here (batch {args.batch} projected {projected_step:.0f} s, so it waits less); "
          f"GPU-like step = 0.2 s with the CPU free:\n")
    print("| batches built in | CPU step: % of time waiting | GPU-like 0.2 s step: % waiting |")
    print("|---|---:|---:|")
    for threads, label in ((True, "2 threads of the trainer (ThreadedBatches, what train uses)"),
                           (False, "2 DataLoader worker processes (StepBatches)")):
        (frac_cpu, _), frac_gpu = waits[threads]
        print(f"| {label} | {100 * frac_cpu:.1f} | {100 * frac_gpu:.1f} |")
    print(f"\nA worker process's batch reaches the trainer through shared memory, whose pages are faulted "
          f"in 4 KiB at a time: {t_worker / t_ours:.0f}x the read itself here, so cached crops are built in "
          f"threads (preadv copies out of the page cache with the GIL released). On a loaded 2-core machine "
          f"the threads get a fraction of a core: a GPU host with free cores waits less.")
    print()


if __name__ == "__main__":
    main()
