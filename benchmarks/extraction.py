"""Stage-1 extraction (upmp.bin.extract_layers): seconds of audio per second, our overhead over
the bare upstream forward on the same audio in the same process, peak memory, disk per hour.

    python benchmarks/extraction.py [--small] [--utts 5] [--seconds 8] [--num_threads 1]

The upstream is a random-init WavLM with WavLM Base+'s shape (12 layers, 768 wide, FFN 3072,
12 heads, CNN 512; built offline in S3PRL's checkpoint format by upmp.upstream.tiny), or the
tiny test upstream with --small. Synthetic 16 kHz PCM wav files in a temporary Kaldi data dir.
  bare     S3PRLUpstream forward, one utterance per call (extraction's default), audio in memory,
           under torch.no_grad
  ours     upmp.bin.extract_layers.main on the data dir (audio reading, the same forward, stacking,
           writing the ark/scp), once per storage type; the upstream is built once beforehand
           for both, so model loading is in neither figure
Bare runs come before, between and after ours; each extraction's overhead is its time over the mean
of the bare runs just before and after it (the load of a shared machine drifts).
Prints Markdown on stdout; the 2-core machine is shared, so figures are noisy.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upmp.data.audio import SAMPLE_RATE, load_audio  # noqa: E402
from upmp.data.layer_stacks import STORAGE_TYPES  # noqa: E402

BASE_PLUS = dict(num_layers=12, dim=768, ffn_dim=3072, heads=12, conv_dim=512)
TINY = dict(num_layers=3, dim=32, ffn_dim=64, heads=2, conv_dim=32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def write_data_dir(directory: Path, n_utts: int, seconds: float) -> Path:
    import soundfile
    from upmp.data.kaldi_dir import DataDir
    rng = np.random.default_rng(0)
    (directory / "wav").mkdir(parents=True)
    wav_scp, utt2spk = {}, {}
    for k in range(n_utts):
        n = int(seconds * SAMPLE_RATE * rng.uniform(0.8, 1.2))
        t = np.arange(n) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n)
        utt = f"spk{k % 2}-utt{k:03d}"
        path = directory / "wav" / f"{utt}.wav"
        soundfile.write(path, x.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        wav_scp[utt], utt2spk[utt] = str(path), f"spk{k % 2}"
    DataDir(wav_scp, utt2spk).write(directory / "data")
    return directory / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="the tiny upstream, 3 utterances of 4 s")
    p.add_argument("--utts", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="mean utterance length")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads (extraction's default: 1)")
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args()
    if args.small:
        args.utts, args.seconds = 3, 4.0
    shape = TINY if args.small else BASE_PLUS
    import upmp.bin.extract_layers as extract_layers
    from upmp.data.kaldi_dir import DataDir
    from upmp.upstream import build_upstream
    from upmp.upstream.tiny import build_tiny_checkpoint
    import contextlib
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp, contextlib.redirect_stdout(sys.stderr):
        tmp = Path(tmp)
        print("building the upstream and the data ...", file=sys.stderr)
        ckpt = build_tiny_checkpoint("wavlm", str(tmp / "wavlm.pt"), **shape)
        data_dir = write_data_dir(tmp, args.utts, args.seconds)
        data = DataDir.load(str(data_dir))
        audio = [torch.from_numpy(load_audio(data.wav_scp[u]))[None] for u in data.utts]
        audio_seconds = sum(a.shape[1] for a in audio) / SAMPLE_RATE
        torch.set_num_threads(args.num_threads)
        rss_start = peak_rss_gb()
        extractor = build_upstream("wavlm_local", str(ckpt))
        bare_model = extractor.upstream  # s3prl.nn.S3PRLUpstream, eval mode, frozen

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                for a in audio:
                    bare_model(a, torch.tensor([a.shape[1]]))
            return time.perf_counter() - t0

        extract_layers.build_upstream = lambda name, ckpt=None: extractor  # built once, outside the timing
        bare()  # warm-up, and one untimed extraction of one utterance (first-call imports)
        warm = DataDir({data.utts[0]: data.wav_scp[data.utts[0]]}, {data.utts[0]: data.utt2spk[data.utts[0]]})
        warm.write(tmp / "warm")
        extract_layers.main(["--data_dir", str(tmp / "warm"), "--out_prefix", str(tmp / "warm_dump" / "layers"),
                             "--upstream", "wavlm_local", "--upstream_ckpt", str(ckpt),
                             "--num_threads", str(args.num_threads)])
        bares, ours, disk = [bare()], {}, {}
        rss_bare = peak_rss_gb()
        for storage in STORAGE_TYPES:
            print(f"extracting ({storage}) ...", file=sys.stderr)
            prefix = tmp / f"dump_{storage}" / "layers"
            t0 = time.perf_counter()
            extract_layers.main(["--data_dir", str(data_dir), "--out_prefix", str(prefix), "--upstream", "wavlm_local",
                                 "--upstream_ckpt", str(ckpt), "--storage", storage,
                                 "--num_threads", str(args.num_threads)])
            ours[storage] = time.perf_counter() - t0
            disk[storage] = prefix.with_suffix(".ark").stat().st_size
            bares.append(bare())
        rss_ours = peak_rss_gb()
    t_bare = statistics.median(bares)
    # each extraction against the bare runs just before and after it: the load on a shared machine drifts
    beside = {st: (bares[k] + bares[k + 1]) / 2 for k, st in enumerate(STORAGE_TYPES)}
    name = "tiny WavLM (--small)" if args.small else "random-init WavLM Base+ shape"
    print(f"### Extraction (`benchmarks/extraction.py{' --small' if args.small else ''}`)\n")
    print(f"{name} ({extractor.num_layers} hidden states x {extractor.dim}), {args.utts} utterances, "
          f"{audio_seconds:.1f} s of audio, {args.num_threads} torch thread(s); bare forward "
          f"{t_bare:.2f} s (median of {len(bares)}: {', '.join(f'{b:.2f}' for b in bares)}).\n")
    print("| storage | extraction s | audio s / s | overhead vs the bare forwards beside it | disk GB / hour of audio |")
    print("|---|---:|---:|---:|---:|")
    for storage in STORAGE_TYPES:
        t = ours[storage]
        print(f"| {storage} | {t:.2f} | {audio_seconds / t:.1f} | {t / beside[storage]:.3f}x | "
              f"{disk[storage] / 1e9 * 3600 / audio_seconds:.2f} |")
    print(f"| bare upstream forward | {t_bare:.2f} | {audio_seconds / t_bare:.1f} | 1.000x | - |")
    print()
    print(f"- overhead target <= 1.15x; worst here {max(ours[st] / beside[st] for st in STORAGE_TYPES):.3f}x, "
          f"against the median bare forward {max(ours.values()) / t_bare:.3f}x")
    print(f"- peak resident memory of the process: {rss_start:.2f} GiB before the upstream, {rss_bare:.2f} GiB "
          f"after the bare forwards, {rss_ours:.2f} GiB after extraction")
    print()


if __name__ == "__main__":
    main()
