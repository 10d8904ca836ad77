"""A mini-recipe training step on a machine shared with another busy process: torch's thread pool.

    python benchmarks/thread_contention.py [--small] [--steps 12] [--busy 1]

The mini recipe's stage-2 step (UPMP backend, conv_dim 32, GE2E-sized stacks 256 x 4 layers x
200 frames, batch 64, AAM head, Adam) is timed in a fresh interpreter per variant, alone and beside
--busy other busy processes (each a Python loop spinning one core, as another job would):

    num_threads   torch.set_num_threads (train_conf.num_threads): 1, or every core (2 here)
    wait policy   OMP_WAIT_POLICY for torch's OpenMP pool: the default (threads spin a while at
                  each barrier before sleeping) or PASSIVE (they sleep at once)

The median seconds a step of each variant and the ratio against the same variant alone are
printed: the ratio is what a shared node costs. On 2 cores a pool of 2 threads beside one busy
process waits at every barrier for the thread the scheduler took off its core; a pool of 1 thread
only shares its core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

STEP = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from upmp.backends import SpeakerEmbeddingModel
from upmp.losses import build_loss
from upmp.train.schema import defaults
torch.manual_seed(0)
batch, steps = int(sys.argv[2]), int(sys.argv[3])
model = SpeakerEmbeddingModel("upmp", 256, 4, use_hidden0=True, backend_conf={"conv_dim": 32})
head = build_loss("aamsoftmax", model.embed_dim, 38, defaults().loss_conf)  # the schema's AAM-softmax: margin 0.2, scale 30
opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-3)
x = torch.randn(batch, 256, 4, 200)
mask = torch.ones(batch, 200, dtype=torch.bool)
labels = torch.randint(0, 38, (batch,))
times = []
for i in range(steps + 2):  # two warm-up steps
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss, _ = head(model(x, mask), labels)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
print(json.dumps(times[2:]))
"""

BUSY = "while True:\n    pass\n"


def run_step(threads: int, policy: str, busy: int, batch: int, steps: int) -> float:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(batch), str(steps)], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return statistics.median(json.loads(out.splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="batch 16, 4 steps (a quick check)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant (after 2 warm-up steps)")
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the training")
    args = p.parse_args()
    batch, steps = (16, 4) if args.small else (64, args.steps)
    cores = len(os.sched_getaffinity(0))
    print("### thread_contention (`benchmarks/thread_contention.py`)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {cores} cores; mini UPMP step, batch {batch}, "
          f"median of {steps} steps; {args.busy} busy process(es) beside it.\n")
    print("| num_threads | OMP_WAIT_POLICY | alone (s/step) | beside busy (s/step) | ratio busy / alone |")
    print("|---|---|---|---|---|")
    for threads in sorted({1, cores}):
        for policy in ("default", "PASSIVE"):
            print(f"[thread_contention] {threads} threads, {policy}", file=sys.stderr, flush=True)
            alone = run_step(threads, policy, 0, batch, steps)
            shared = run_step(threads, policy, args.busy, batch, steps)
            print(f"| {threads} | {policy} | {alone:.3f} | {shared:.3f} | {shared / alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
