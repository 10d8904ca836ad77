"""Mixed precision: the UPMP training step in fp32 vs bf16 autocast (and fp16 on CUDA).

    python benchmarks/amp.py [--device cpu|cuda] [--batch 8] [--repeats 3] [--backend upmp] [--small]

The step is forward + backward with the AAM head at paper size (D 768, 12 layers,
150 frames), as in benchmarks/backend_step.py. The precisions alternate within
each repeat; medians, and the ratio of each to fp32 measured in the same run
(below 1: slower than fp32). On CPUs the outcome depends on the chip and the
threads: an earlier run on the 2-core AMD EPYC development machine (avx512_bf16)
found bf16 10x slower; this script there gave 1.6x faster with --threads 1 and about
equal with 2 threads (2026-12-01, machine shared).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.backend_step import PAPER, SMALL, build, inputs, machine, make_step
from upmp.losses import AAMSoftmax


def dtypes_for(device: str):
    return ["fp32", "bf16", "fp16"] if device == "cuda" else ["fp32", "bf16"]


def measure(backend: str, size: dict, batch: int, repeats: int, device: str, dtypes):
    model = build(backend, size).to(device).train()
    torch.manual_seed(2)
    head = AAMSoftmax(model.embed_dim, size["speakers"]).to(device)
    x, mask, labels = inputs(backend, size, batch, device)
    steps = {d: make_step(model, head, x, mask, labels, device, d) for d in dtypes}
    times = {d: [] for d in dtypes}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for d, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[d].append(time.perf_counter() - t0)
    return {d: statistics.median(v) for d, v in times.items()}


def cpu_bf16_flags() -> str:
    """The bf16 instruction flags this CPU advertises (Linux /proc/cpuinfo); having them
    does not make autocast fast: the measured ratio says."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return "unknown"
    return " ".join(sorted(w for w in words if w in ("avx512_bf16", "amx_bf16", "amx_tile"))) or "none"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="upmp")
    p.add_argument("--batch", nargs="+", type=int, default=[8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16", "fp16"], help="default: fp32 bf16 (+ fp16 on cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, not a benchmark)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SMALL if args.small else PAPER
    dtypes = args.dtypes or dtypes_for(args.device)
    if "fp32" not in dtypes:
        dtypes = ["fp32"] + dtypes  # the baseline
    note = "" if args.device == "cuda" else f"; CPU bf16 flags: {cpu_bf16_flags()}"
    print(f"# {args.backend} step (forward + backward, AAM head), {args.device}: {machine(args.device)}{note}; "
          f"D {size['input_dim']}, {size['num_layers']} layers, {size['frames']} frames, median of {args.repeats}")
    print(f"{'batch':>5s} " + " ".join(f"{d + ' s':>9s}" for d in dtypes) + " "
          + " ".join(f"{'fp32/' + d:>10s}" for d in dtypes if d != "fp32"))
    for batch in args.batch:
        med = measure(args.backend, size, batch, args.repeats, args.device, dtypes)
        print(f"{batch:5d} " + " ".join(f"{med[d]:9.3f}" for d in dtypes) + " "
              + " ".join(f"{med['fp32'] / med[d]:9.2f}x" for d in dtypes if d != "fp32"), flush=True)


if __name__ == "__main__":
    main()
