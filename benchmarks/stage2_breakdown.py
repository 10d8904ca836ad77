"""Where the mini recipe's stage-2 time goes: the trainer's step against the model's arithmetic alone.

    python benchmarks/stage2_breakdown.py [--small]

On cached layer stacks shaped like the mini recipe's training set (38 speakers x 12 utterances of
3-8 s, GE2E: 4 hidden states x 256 dims, 10 ms frames) and the mini recipe's own config
(egs/mini/sv1/conf/train_upmp.yaml: UPMP conv_dim 32, batch 64, 2 s crops, preloaded), in this process:
    trainer   upmp.train.train for N and 4N steps without validation; a step's cost is the
              difference divided by 3N (set-up, preload and model.pt writing cancel out):
              sampling, crop reading, host-side batching, logging, checkpoints and the step itself
    model     the same model, loss head and optimiser on one fixed batch of the same shape:
              forward, backward and Adam, nothing else (the median over the steps)
The ratio trainer / model is what is not the model's arithmetic. A profile of the model step (torch
operators, one thread) shows where the arithmetic goes.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_dump(root: Path, speakers: int, utts: int) -> Path:
    from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter
    rng = np.random.default_rng(0)
    d = root / "dump"
    d.mkdir()
    utt2spk = {}
    with LayerStackWriter(str(d / "layers"), "float32") as w:
        for s in range(speakers):
            for u in range(utts):
                utt = f"id{s:05d}-u{u:02d}"
                frames = int(rng.integers(300, 800))
                w.write(utt, (rng.normal(size=(4, frames, 256)) * 0.5 + 0.01 * s).astype(np.float32))
                utt2spk[utt] = f"id{s:05d}"
    LayerStackMeta(4, 256, 0.01, "ge2e").write(str(d))
    (root / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(utt2spk.items())))
    return d


def trainer_seconds(root: Path, dump: Path, steps: int, tag: str) -> float:
    from upmp.train.trainer import Inputs, train
    from upmp.train.schema import resolve_train_config
    cfg = resolve_train_config(str(ROOT / "egs/mini/sv1/conf/train_upmp.yaml"),
                               [f"--train_conf.steps={steps}", "--train_conf.log_every=1000",
                                "--train_conf.ckpt_every=100000", "--train_conf.valid_every=100000"])
    inputs = Inputs(train_scp=str(dump / "layers.scp"), utt2spk=str(root / "utt2spk"))
    t = time.perf_counter()
    train(cfg, inputs, str(root / f"exp_{tag}"))
    return time.perf_counter() - t


def model_step_seconds(steps: int, batch: int, frames: int, profile: bool = False):
    import torch
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.losses import build_loss
    from upmp.train.schema import defaults
    torch.manual_seed(0)
    model = SpeakerEmbeddingModel("upmp", 256, 4, use_hidden0=True, backend_conf={"conv_dim": 32})
    head = build_loss("aamsoftmax", model.embed_dim, 38, defaults().loss_conf)  # the schema's AAM-softmax: margin 0.2, scale 30
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    x, mask = torch.randn(batch, 256, 4, frames), torch.ones(batch, frames, dtype=torch.bool)
    labels = torch.randint(0, 38, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = head(model(x, mask), labels)
        loss.backward()
        opt.step()

    step()
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(steps):
                step()
        return p.key_averages()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="10 speakers, N = 3 (a quick check)")
    p.add_argument("--steps", type=int, default=15, help="N")
    args = p.parse_args()
    import torch
    speakers, n = (10, 3) if args.small else (38, args.steps)
    torch.set_num_threads(2)  # the mini config's train_conf.num_threads
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("[stage2_breakdown] writing the stacks", file=sys.stderr, flush=True)
        dump = make_dump(root, speakers, 12)
        short = trainer_seconds(root, dump, n, "short")
        long = trainer_seconds(root, dump, 4 * n, "long")
        per_step = (long - short) / (3 * n)
    torch.set_num_threads(2)
    bare = model_step_seconds(max(n, 5), 64, 200)
    print("### stage2_breakdown (`benchmarks/stage2_breakdown.py`)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"torch {torch.__version__}, 2 threads; mini UPMP config, batch 64, 2 s crops (200 frames).\n")
    print("| what | s / step | ratio to the model alone |")
    print("|---|---|---|")
    print(f"| trainer (upmp.train.train, {n} vs {4 * n} steps) | {per_step:.3f} | {per_step / bare:.2f} |")
    print(f"| model alone (forward + backward + Adam) | {bare:.3f} | 1.00 |")
    torch.set_num_threads(1)
    table = model_step_seconds(3, 64, 200, profile=True)
    rows = sorted(table, key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in table)
    print("\nThe model step by torch operator (one thread, 3 steps, self time):\n")
    print("| operator | share |")
    print("|---|---|")
    for e in rows[:8]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % |")


if __name__ == "__main__":
    main()
