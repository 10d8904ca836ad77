"""Start-up costs every job pays: building an S3PRL upstream, and resampling mini-corpus TTS audio.

    python benchmarks/startup.py [--small] [--repeats 3]

1. A stage-1 job, a check or an online run starts by building its upstream. Each variant runs in a
   fresh interpreter (import and build timed inside it, medians over --repeats), on a tiny random-init
   WavLM checkpoint (upmp.upstream.tiny, built offline):
     ours      upmp.upstream.build_upstream: the lazy s3prl.hub (upmp/upstream/s3prl_hub.py) imports
               only the hubconf that defines the name
     baseline  the same call after `import s3prl.hub`, S3PRL's own module (imports all its upstreams)
   Both must give the same layer stack.
2. Resampling 6 s of 22.05 kHz TTS output played faster by a speaker's formant factor to 16 kHz,
   what the mini corpus does for every utterance (up / down like 16000 / 23467), in this process:
     ours      upmp.data.audio.resample (each up / down filter designed once, then reused)
     baseline  scipy.signal.resample_poly designing its filter on every call
   Both must give the same samples, bit for bit.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUILD = r"""
import json, sys, time
t0 = time.perf_counter()
if sys.argv[2] == "baseline":
    import s3prl.hub  # S3PRL's own hub: every upstream's hubconf
import torch
from upmp.upstream import build_upstream
upstream = build_upstream("wavlm_local", sys.argv[1])
seconds = time.perf_counter() - t0
torch.manual_seed(0)
with torch.no_grad():
    stack = upstream(torch.randn(1, 8000), torch.tensor([8000]))[0]
print(json.dumps({"seconds": seconds, "checksum": float(stack.double().sum()), "hub": type(sys.modules["s3prl.hub"]).__name__}))
"""


def build_times(ckpt: str, variant: str, repeats: int):
    runs = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", BUILD, ckpt, variant], capture_output=True, text=True, check=True)
        runs.append(json.loads(r.stdout.splitlines()[-1]))
    return statistics.median(x["seconds"] for x in runs), {x["checksum"] for x in runs}, runs[0]["hub"]


def resample_times(repeats: int, n_rates: int):
    from scipy.signal import resample_poly
    from upmp.data import audio
    rng = np.random.default_rng(0)
    x = rng.standard_normal(6 * 22050)
    rates = [int(round(22050 * f)) for f in np.linspace(1.02, 1.12, n_rates)]  # one per speaker
    ours, base = [], []
    for _ in range(repeats):
        audio._resampling_filter.cache_clear()
        for rate in rates:  # a speaker's utterances share its rate: 12 utterances each in the mini corpus
            for _ in range(12):
                t0 = time.perf_counter()
                a = audio.resample(x, rate, 16000)
                t1 = time.perf_counter()
                g = math.gcd(rate, 16000)
                b = resample_poly(x, 16000 // g, rate // g).astype(np.float32)
                t2 = time.perf_counter()
                assert np.array_equal(a, b), rate
                ours.append(t1 - t0)
                base.append(t2 - t1)
    return statistics.median(ours), statistics.median(base), len(rates)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a quick run: 2 builds each, 2 speakers' rates")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    repeats = 2 if args.small else args.repeats
    import torch
    torch.set_num_threads(1)
    from upmp.upstream.tiny import build_tiny_checkpoint
    print(f"machine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}; "
          f"medians of {repeats} fresh interpreters / calls")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_checkpoint("wavlm", str(Path(tmp) / "wavlm_tiny.pt"))
        print("== benchmarks/startup.py: building", file=sys.stderr)
        ours, ours_sum, ours_hub = build_times(ckpt, "ours", repeats)
        base, base_sum, base_hub = build_times(ckpt, "baseline", repeats)
    assert len(ours_sum | base_sum) == 1, "the two hubs built different upstreams"
    print("import + build of an S3PRL upstream (wavlm_local, tiny), fresh interpreter:")
    print(f"  ours (lazy s3prl.hub, {ours_hub})          {ours:6.2f} s")
    print(f"  baseline (S3PRL's own hub, {base_hub})        {base:6.2f} s")
    print(f"  baseline / ours                         {base / ours:6.2f}x   (same layer stack)")
    o, b, n = resample_times(repeats, 2 if args.small else 8)
    print(f"resample 6 s of TTS audio to 16 kHz, {n} speakers' formant rates x 12 utterances (mini corpus):")
    print(f"  ours (filter designed once per rate)    {1000 * o:6.1f} ms per utterance")
    print(f"  baseline (resample_poly designs it)     {1000 * b:6.1f} ms per utterance")
    print(f"  baseline / ours                         {b / o:6.2f}x   (same samples, bit for bit)")


if __name__ == "__main__":
    main()
