"""Online mode: waveform crops per second per worker, against what the upstream consumes.

    python benchmarks/online_crops.py [--small] [--utts 64] [--seconds 8.2] [--crop_seconds 3] [--batch 32]

Synthetic utterances of about --seconds (8.2 s, the VoxCeleb1 mean) are stored three ways:
16-bit wav, 16-bit flac (what `--convert_audio` in the VoxCeleb2 recipe writes) and AAC m4a read
through the recipe's `ffmpeg ... |` pipe. For each, one process (one DataLoader worker) builds
batches of random 3 s crops (upmp.train.data.WaveformCrops) two ways in the same run:
  ours      decode only the crop (soundfile seek; a pipe still decodes whole)
  baseline  decode the whole file, then crop (the code before crop-only reads, kept here)
and both must give the same batches. Then the upstream's consumption, in seconds of audio per
second of a frozen forward pass on the same crops (one thread): the tiny random-init WavLM of the
tests / mini recipe, and (without --small) a WavLM Base+-shaped random-init model (12 x 768), built
offline from upmp.upstream.tiny. The last lines say how many workers keep each upstream fed.
Figures are medians over --repeats batches; the machine is printed first.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from upmp.data.audio import SAMPLE_RATE  # noqa: E402
from upmp.data.kaldi_dir import DataDir  # noqa: E402
from upmp.recipes.voxceleb import wav_scp_entry  # noqa: E402
from upmp.data.crops import wrap_crop  # noqa: E402
from upmp.train.data import WaveformCrops, crop_start  # noqa: E402


class WholeDecodeCrops(WaveformCrops):
    """The baseline: every row decodes its whole utterance, then crops it."""

    def _crop(self, i, rng):
        wav = self._read(i)
        return wrap_crop(wav, crop_start(rng, len(wav), self.crop_samples), self.crop_samples)


def make_corpus(root: Path, n: int, seconds: float) -> dict:
    """n utterances of seconds +- 10 % as wav, flac and m4a -> {format: data dir}."""
    rng = np.random.default_rng(0)
    entries = {"wav": {}, "flac": {}, "m4a": {}}
    procs = []
    for i in range(n):
        utt = f"spk{i % 8}-utt{i:04d}"
        length = int(seconds * rng.uniform(0.9, 1.1) * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        x = (0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) + 0.05 * rng.standard_normal(length)).astype(np.float32)
        for fmt in ("wav", "flac"):
            path = root / fmt / f"{utt}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, x, SAMPLE_RATE, subtype="PCM_16")
            entries[fmt][utt] = str(path)
        m4a = root / "m4a" / f"{utt}.m4a"
        m4a.parent.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-y", "-i",
                                       str(root / "wav" / f"{utt}.wav"), "-c:a", "aac", "-b:a", "64k", str(m4a)]))
        entries["m4a"][utt] = wav_scp_entry(m4a)
        if len(procs) >= 4:
            assert procs.pop(0).wait() == 0
    assert all(p.wait() == 0 for p in procs)
    dirs = {}
    for fmt, wav_scp in entries.items():
        dirs[fmt] = root / f"data_{fmt}"
        DataDir(wav_scp, {u: u.split("-")[0] for u in wav_scp}).write(dirs[fmt])
    return dirs


def batch_seconds(source, steps) -> list:
    times = []
    for step in steps:
        t0 = time.perf_counter()
        source.batch(step)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def upstream_rate(upstream, wavs: torch.Tensor, repeats: int) -> float:
    """Seconds of audio per second of a frozen forward on (B, N) crops (median of repeats)."""
    lens = torch.full((wavs.shape[0],), wavs.shape[1], device=wavs.device)
    upstream(wavs, lens)  # warm-up
    sync = torch.cuda.synchronize if wavs.is_cuda else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        upstream(wavs, lens)
        sync()
        times.append(time.perf_counter() - t0)
    return wavs.numel() / SAMPLE_RATE / float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="quick run: fewer utterances and batches, no full-size WavLM")
    p.add_argument("--utts", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.2)
    p.add_argument("--crop_seconds", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=32, help="crops per batch (one worker's batch)")
    p.add_argument("--repeats", type=int, default=7, help="batches timed per figure (m4a pipe: fewer)")
    p.add_argument("--upstream_batch", type=int, default=8, help="crops per upstream forward")
    p.add_argument("--device", default="cpu", help="where the upstream runs (cuda: a GPU's consumption)")
    args = p.parse_args()
    if args.small:
        args.utts, args.batch, args.repeats, args.upstream_batch = 16, 16, 3, 4
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
          f"soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}); 1 thread")
    crop = int(round(args.crop_seconds * SAMPLE_RATE))
    with tempfile.TemporaryDirectory(prefix="upmp_online_crops.") as tmp:
        dirs = make_corpus(Path(tmp), args.utts, args.seconds)
        print(f"{args.utts} utterances of {args.seconds:.1f} s +- 10 %, crops of {args.crop_seconds:g} s, "
              f"batches of {args.batch}; crops per second per worker (median of batches)")
        print(f"{'format':<10} {'ours':>10} {'whole-file':>11} {'ours/whole':>11}")
        rates = {}
        for fmt, d in dirs.items():
            ours = WaveformCrops(str(d), crop, args.batch, seed=0)
            base = WholeDecodeCrops(str(d), crop, args.batch, seed=0)
            n = args.repeats if fmt != "m4a" else max(2, args.repeats // 3)
            steps = list(range(n))
            for step in steps[:1]:  # same batches, and the page cache warm for both
                a, b = ours.batch(step), base.batch(step)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), fmt
            t_ours = float(np.median(batch_seconds(ours, steps)))
            t_base = float(np.median(batch_seconds(base, steps)))
            rates[fmt] = args.batch / t_ours
            note = "  (a pipe decodes whole either way: the ratio is noise)" if fmt == "m4a" else ""
            print(f"{fmt:<10} {args.batch / t_ours:>10.0f} {args.batch / t_base:>11.0f} {t_base / t_ours:>10.2f}x{note}")
        print(f"flac / m4a pipe (converting once): {rates['flac'] / rates['m4a']:.0f}x; "
              f"wav / m4a pipe: {rates['wav'] / rates['m4a']:.0f}x")
        wavs = WaveformCrops(str(dirs["wav"]), crop, args.upstream_batch, seed=0).batch(0)[0].to(args.device)
        from upmp.upstream import build_upstream
        from upmp.upstream.tiny import build_tiny_checkpoint
        models = [("tiny WavLM (4 x 128)", dict())]
        if not args.small:
            models.append(("WavLM Base+-shaped (12 x 768)", dict(num_layers=12, dim=768, ffn_dim=3072, heads=12,
                                                                  conv_dim=512)))
        print(f"upstream consumption, frozen forward of {args.upstream_batch} x {args.crop_seconds:g} s on {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ", 1 thread") + ":")
        for name, size in models:
            ckpt = build_tiny_checkpoint("wavlm", str(Path(tmp) / f"wavlm_{len(size)}.pt"), **size)
            upstream = build_upstream("wavlm_local", str(ckpt)).freeze().to(args.device)
            audio_rate = upstream_rate(upstream, wavs, max(2, args.repeats // 2))
            need = audio_rate / args.crop_seconds  # crops per second it eats
            print(f"  {name:<30} {audio_rate:8.1f} s of audio/s = {need:7.1f} crops/s; workers to keep it fed: "
                  + ", ".join(f"{fmt} {need / r:.2f}" for fmt, r in rates.items()))
            del upstream


if __name__ == "__main__":
    main()
