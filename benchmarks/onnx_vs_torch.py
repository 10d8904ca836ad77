"""Embedding speed on CPU: onnxruntime vs torch, same model, same 10 s utterances, same process.

    python benchmarks/onnx_vs_torch.py [--model DIR] [--seconds 10] [--batch 1 8] [--repeats 5] [--threads 2]

The model is a package / experiment dir, or by default a random-init UPMP backend of the mini
recipe's size (conf/train_upmp.yaml: conv_dim 32, 192-d) over the GE2E upstream, whose whole
waveform -> embedding graph exports (speed does not depend on the trained weights). Both
graphs are timed: "full" (waveform in; torch runs SpeakerModel.embed_raw, one upstream forward
per utterance as stage 3 does, then the padded backend batch; onnxruntime runs the exported
graph on the padded batch) and "backend" (layer stacks in, torch BackendGraph vs onnxruntime).
Prints embeddings per second (median of --repeats runs after one warm-up) and the ratio.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch


def mini_model():
    from upmp.backends import SpeakerEmbeddingModel
    from upmp.inference import SpeakerModel
    from upmp.upstream.ge2e import GE2EUpstream
    cfg = {"backend": "upmp", "use_hidden0": True, "backend_conf": {"conv_dim": 32, "n_blocks": 1, "heads": 4, "embed_dim": 192}}
    L, D = GE2EUpstream.num_layers, GE2EUpstream.dim
    torch.manual_seed(0)
    backend = SpeakerEmbeddingModel("upmp", D, L, True, cfg["backend_conf"]).eval()
    info = {"config": cfg, "layer_stack": {"num_layers": L, "dim": D, "frame_shift": 0.01, "upstream": "ge2e"},
            "upstream": {"name": "ge2e"}, "mean": [0.0] * 192, "calibration": None, "threshold": None,
            "experiment": "random-init mini UPMP over GE2E", "upmp_version": "benchmark"}
    return SpeakerModel({"info": info, "backend": backend.state_dict(), "upstream_state": None, "upstream_source": None})


def median_rate(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="package or experiment dir [random-init mini UPMP over GE2E]")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from upmp.data.layout import pad_stacks
    from upmp.export import BackendGraph, export_onnx, onnx_session, padded_waveforms
    from upmp.inference import load_model
    model = load_model(args.model) if args.model else mini_model()
    tmp = tempfile.mkdtemp()
    paths = {g: os.path.join(tmp, f"{g}.onnx") for g in ("full", "backend")}
    for g, path in paths.items():
        export_onnx(model, path, g)
    sessions = {g: onnx_session(path, args.threads) for g, path in paths.items()}
    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"model: {model.info['experiment']} ({model.info['upstream']['name']}, {model.embed_dim}-d); "
          f"{args.seconds:g} s utterances; median of {args.repeats}")
    print("| graph | batch | torch (emb/s) | onnxruntime (emb/s) | ratio |")
    print("|---|---|---|---|---|")
    backend_graph = BackendGraph(model.backend).eval()
    for B in args.batch:
        # lengths within 10 % of --seconds: a padded batch as in practice
        wavs = [0.1 * rng.standard_normal(int(n * f)).astype(np.float32) for f in np.linspace(1.0, 0.9, B)]
        x, lens = padded_waveforms(wavs)
        t_full = median_rate(lambda: model.embed_raw(wavs), B, args.repeats)
        o_full = median_rate(lambda: sessions["full"].run(None, {"wavs": x, "wav_lens": lens}), B, args.repeats)
        print(f"| full (waveform) | {B} | {t_full:.1f} | {o_full:.1f} | {o_full / t_full:.2f}x |", flush=True)
        s, slens = pad_stacks([model.layer_stack(w) for w in wavs])
        st, sl = torch.from_numpy(s), torch.from_numpy(slens)

        def torch_backend():
            with torch.no_grad():
                backend_graph(st, sl)
        t_b = median_rate(torch_backend, B, args.repeats)
        o_b = median_rate(lambda: sessions["backend"].run(None, {"stack": s, "lengths": slens}), B, args.repeats)
        print(f"| backend (layer stack) | {B} | {t_b:.1f} | {o_b:.1f} | {o_b / t_b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
