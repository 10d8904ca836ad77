"""What a layer-stack cache costs per storage type and layer subset: disk, extraction, loading.

    python benchmarks/cache_storage.py [--small] [--stacks dump/ge2e/voxceleb1_dev/layers.scp]

In this process, on synthetic speech-like audio (harmonic tones in noise, 2-8 s utterances) run
through a random-init WavLM of Base shape (13 hidden states x 768, 50 frames/s; --small: a tiny one):
    upstream    the upstream's forward over the audio, once (what every storage type shares)
    write       converting and writing those stacks (upmp.data.layer_stacks.LayerStackWriter):
                float32, float16, compressed (Kaldi's 8-bit), int8 (a float16 scale and offset per
                (frame, hidden state) row), each for all hidden states and two subsets (--layers)
    disk        the ark's bytes per hour of audio (measured: ark size / audio duration)
    batch       the cached loader's batch (LayerStackCrops, not preloaded: crops read by offset, 64
                x 3 s, then to_model_input on the CPU, i.e. widened to float32 (B, D, L, T)), median
                over batches; the arks were just written, so they are in the page cache: this is
                the decoding cost, not the disk's
    error       the round trip's relative RMS error (RMS of stored - original over the RMS of the
                original), on these stacks and, with --stacks, on a real cache (e.g. the mini
                recipe's GE2E stacks, read and re-stored in each type)
Ratios are against float32 of all hidden states, in the same run. The projected disk for VoxCeleb1
dev (340.4 h) and VoxCeleb2 dev (2,360.2 h; the corpora's published durations) at 50 frames/s is
the format's bytes per frame: float32 4 L D, float16 2 L D, int8 L (D + 4), compressed: the measured
bytes per value here times L D (per-utterance headers, ~100 bytes, left out).
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

STORAGES = ("float32", "float16", "compressed", "int8")
HOURS = {"VoxCeleb1 dev": 340.4, "VoxCeleb2 dev": 2360.2}
SHAPES = {"Base (13 x 768)": (13, 768), "Large (25 x 1024)": (25, 1024)}
FPS = 50


def log(msg: str) -> None:
    print(f"[cache_storage] {msg}", file=sys.stderr, flush=True)


def speech_like(rng, seconds: float) -> np.ndarray:
    """Harmonics of a wandering pitch with syllable-rate amplitude, in noise (16 kHz)."""
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    f0 = 110 + 60 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.random() * 6) ** 2
    return (0.1 * x + 0.01 * rng.normal(size=n)).astype(np.float32)


def build_upstream(small: bool, root: Path):
    from upmp.upstream import build_upstream as build
    from upmp.upstream.tiny import build_tiny_checkpoint
    shape = dict(num_layers=4, dim=64, ffn_dim=128, heads=4, conv_dim=64) if small else \
        dict(num_layers=12, dim=768, ffn_dim=3072, heads=12, conv_dim=512)
    ckpt = build_tiny_checkpoint("wavlm", str(root / "wavlm.pt"), **shape)
    return build("wavlm_local", str(ckpt))


def write_set(stacks, directory: Path, storage: str, layers):
    """Write the stacks (a subset of hidden states) in one storage type; returns (seconds, bytes)."""
    from upmp.data.layer_stacks import LayerStackMeta, LayerStackWriter
    directory.mkdir(parents=True)
    t = time.perf_counter()
    with LayerStackWriter(str(directory / "layers"), storage) as w:
        for utt, x in stacks.items():
            w.write(utt, x if layers is None else x[layers])
    seconds = time.perf_counter() - t
    L, _, D = next(iter(stacks.values())).shape
    LayerStackMeta(L if layers is None else len(layers), D, 1 / FPS, "bench", storage, layers).write(str(directory))
    return seconds, (directory / "layers.ark").stat().st_size


def batch_seconds(directory: Path, utt2spk: Path, num_layers: int, batches: int, batch: int) -> float:
    from upmp.train.data import LayerStackCrops, to_model_input
    crops = LayerStackCrops(str(directory / "layers.scp"), str(utt2spk), num_layers, 3 * FPS, batch, seed=0,
                            preload=False)
    times = []
    for step in range(batches + 1):
        t = time.perf_counter()
        x, _ = crops.raw_batch(step)
        to_model_input(x, "cpu")
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # the first opens the files


def rel_error(directory: Path, stacks, layers, num_layers: int) -> float:
    from upmp.data.kaldi_dir import read_table
    from upmp.data.layer_stacks import load_stack
    entries = read_table(directory / "layers.scp")
    err = ref = 0.0
    for utt, x in stacks.items():
        x = x if layers is None else x[layers]
        got = load_stack(entries[utt], num_layers)
        err += float(((got.astype(np.float64) - x) ** 2).sum())
        ref += float((x.astype(np.float64) ** 2).sum())
    return (err / ref) ** 0.5


def size(n: float) -> str:
    """Decimal units (1 GB = 1e9 bytes), as disk sizes and the README's figures are given."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return ""


def real_stack_errors(scp: str, limit: int, root: Path):
    """Relative RMS error of each storage type on stacks of a real cache (its first `limit` utterances)."""
    from upmp.data.kaldi_dir import read_table
    from upmp.data.layer_stacks import LayerStackMeta, MatrixReader, matrix_to_stack
    meta = LayerStackMeta.read(str(Path(scp).parent))
    entries = dict(list(read_table(scp).items())[:limit])
    reader = MatrixReader(list(entries.values()), source=scp)  # finds arks written relative to the recipe
    stacks = {utt: matrix_to_stack(reader.read_float(i), meta.num_layers) for i, utt in enumerate(entries)}
    rows = []
    for storage in STORAGES:
        d = root / f"real_{storage}"
        _, nbytes = write_set(stacks, d, storage, None)
        rows.append((storage, nbytes, rel_error(d, stacks, None, meta.num_layers)))
    return meta, sum(x.shape[1] for x in stacks.values()), rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a tiny upstream, 30 s of audio, 3 batches (a quick check)")
    p.add_argument("--seconds", type=float, default=240.0, help="audio to extract (default 240)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--stacks", default=None, help="a real cache's layers.scp to measure the round-trip error on")
    args = p.parse_args()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seconds, batches, batch = (30.0, 3, 16) if args.small else (args.seconds, args.batches, 64)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="upmp_cache_storage_") as tmp:
        root = Path(tmp)
        up = build_upstream(args.small, root)
        L, D = up.num_layers, up.dim
        audio, total = {}, 0.0
        while total < seconds:
            dur = float(rng.uniform(2, 8))
            audio[f"s{len(audio) % 8}-u{len(audio):04d}"] = speech_like(rng, dur)
            total += dur
        utt2spk = root / "utt2spk"
        utt2spk.write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(audio)))
        log(f"upstream forward over {total:.0f} s of audio (L={L}, D={D})")
        stacks = {}
        t = time.perf_counter()
        with torch.no_grad():
            for utt, wav in audio.items():
                x = torch.from_numpy(wav)[None]
                stack, _ = up(x, torch.tensor([x.shape[1]]))
                stacks[utt] = stack[0].permute(1, 2, 0).numpy().copy()  # (L, T, D)
        upstream_s = time.perf_counter() - t
        frames = sum(x.shape[1] for x in stacks.values())
        hours = total / 3600
        subsets = [("all", None), (f"0,{L // 3},{2 * L // 3},{L - 1}", [0, L // 3, 2 * L // 3, L - 1]),
                   (f"{L // 2}-{L - 1}", list(range(L // 2, L)))]
        results = []
        for name, layers in subsets:
            for storage in STORAGES if layers is None else ("float16", "int8"):
                log(f"{storage}, layers {name}")
                d = root / f"{storage}_{name.replace(',', '_')}"
                write_s, nbytes = write_set(stacks, d, storage, layers)
                n_layers = L if layers is None else len(layers)
                results.append(dict(storage=storage, layers=name, n=n_layers, write=write_s, bytes=nbytes,
                                    batch=batch_seconds(d, utt2spk, n_layers, batches, batch),
                                    error=rel_error(d, stacks, layers, n_layers)))
        real = real_stack_errors(args.stacks, 200 if not args.small else 20, root) if args.stacks else None

    base = results[0]
    print("### cache_storage (`benchmarks/cache_storage.py" + (" --small" if args.small else "") + "`)\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"torch threads {torch.get_num_threads()}. Random-init WavLM, L={L} hidden states x D={D}, "
          f"{len(audio)} utterances, {total:.0f} s of audio ({frames} frames); upstream forward "
          f"{upstream_s:.1f} s ({upstream_s / total:.3f} s per second of audio), shared by every row. "
          f"Batch: {batch} crops of 3 s, not preloaded (page cache warm). Ratios against float32, all layers.\n")
    print("| storage | layers | disk per hour of audio | ratio | write s per hour of audio | ratio | "
          "batch ms | ratio | rel. RMS error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['storage']} | {r['layers']} | {size(r['bytes'] / hours)} | {r['bytes'] / base['bytes']:.3f} | "
              f"{r['write'] / hours:.1f} | {r['write'] / base['write']:.2f} | {1000 * r['batch']:.1f} | "
              f"{r['batch'] / base['batch']:.2f} | {r['error']:.2e} |")
    compressed = next(r for r in results if r["storage"] == "compressed")
    per_value = {"float32": 4.0, "float16": 2.0, "compressed": compressed["bytes"] / (frames * L * D)}
    print(f"\nProjected disk at {FPS} frames/s (compressed: {per_value['compressed']:.3f} bytes per value, "
          "as measured above):\n")
    head = [f"{c} {s}" for c in HOURS for s in SHAPES]
    print("| storage | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for storage in STORAGES:
        cells = []
        for h in HOURS.values():
            for Ls, Ds in SHAPES.values():
                per_frame = Ls * (Ds + 4) if storage == "int8" else per_value[storage] * Ls * Ds
                cells.append(size(per_frame * FPS * 3600 * h))
        print(f"| {storage} | " + " | ".join(cells) + " |")
    if real is not None:
        meta, real_frames, rows = real
        print(f"\nRound trip on {args.stacks} ({meta.upstream}, L={meta.num_layers} x D={meta.dim}, "
              f"{real_frames} frames):\n")
        print("| storage | bytes per frame | ratio | rel. RMS error |")
        print("|---|---|---|---|")
        for storage, nbytes, err in rows:
            print(f"| {storage} | {nbytes / real_frames:.0f} | {nbytes / rows[0][1]:.3f} | {err:.2e} |")
    print()


if __name__ == "__main__":
    main()
