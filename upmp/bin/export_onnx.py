"""Export a trained model to ONNX, checked against torch with onnxruntime.

    python -m upmp.bin.export_onnx --model models/upmp_ge2e --out upmp_ge2e.onnx

Writes <out> (the backend: stack (B, D, L, T) float32 + lengths (B,) int64 frames ->
embeddings (B, E)) and, when the upstream exports (GE2E; hf:<dir> WavLM / HuBERT /
wav2vec 2.0), <out stem>.wav.onnx (wavs (B, N) float32 at 16 kHz + wav_lens (B,) int64 ->
embeddings (B, E)); B, T and N are dynamic. <out>.json holds what scoring needs beside the
graphs (the training-set mean, calibration, EER threshold, input names). Each graph is run by
onnxruntime on a zero-padded batch of utterances of different lengths and compared with torch
embedding each one alone; a difference above --tolerance is an error, and then nothing is
written (each graph is checked under a temporary name and renamed only when all pass, so an
earlier export at <out> stays as it was). The graphs fail on lengths that do not fit their input
(another batch size, < 1, > the padded length); run them with upmp.export.OnnxEmbedder to have
that checked first, as one clear line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from upmp.bin.common import make_parser, run_main, set_num_threads, setup_logging
from upmp.errors import ModelFileError

logger = logging.getLogger("export_onnx")


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("--out", required=True, help="ONNX file of the backend graph")
    p.add_argument("--graphs", nargs="+", choices=("backend", "full"), default=["backend", "full"],
                   help="backend and/or full (waveform -> embedding; skipped with a warning when the upstream "
                        "does not export)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |onnxruntime - torch|")
    p.add_argument("--num_threads", type=int, default=2)
    return p


def check_waveforms(seed: int = 0):
    """Three test utterances of different lengths (a padded batch): harmonic tones plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for seconds, f0 in ((1.7, 140.0), (0.9, 210.0), (1.3, 175.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * 0.1 + 0.01 * rng.standard_normal(t.size)
        out.append(x.astype(np.float32))
    return out


def _temp_beside(path: Path) -> Path:
    """A unique temporary name in the directory of `path` (so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    from upmp.export import check_onnx, export_onnx
    from upmp.fileio import atomic_write_text
    from upmp.inference import load_model
    model = load_model(args.model)
    out = Path(args.out)
    paths = {"backend": out, "full": out.with_name(out.stem + ".wav.onnx")}
    written, temps = {}, {}
    try:
        # each graph is written under a temporary name and checked there; only when every graph
        # passes do they take their final names, so a rejected export never replaces a good one
        for graph in args.graphs:
            temps[graph] = _temp_beside(paths[graph])
            try:
                export_onnx(model, str(temps[graph]), graph)
            except ModelFileError as e:
                if graph == "full" and args.graphs != ["full"]:
                    logger.warning("no waveform graph: %s", e)
                    continue
                raise
            diff = check_onnx(model, str(temps[graph]), graph, check_waveforms())
            if not diff <= args.tolerance:
                raise ModelFileError(f"{paths[graph]}: onnxruntime differs from torch by {diff:.2e} "
                                     f"(> --tolerance {args.tolerance:g}); not written (an earlier file there is "
                                     "kept); raise --tolerance if that difference is acceptable")
            logger.info("%s graph -> %s (onnxruntime vs torch on a padded batch: max |diff| %.1e)",
                        graph, paths[graph], diff)
            written[graph] = {"file": paths[graph].name, "max_abs_diff": diff}
        for graph in written:
            os.replace(temps[graph], paths[graph])
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
    info = model.info
    sidecar = {"model": info["experiment"], "upmp_version": info["upmp_version"], "graphs": written,
               "inputs": {"backend": ["stack (B, D, L, T) float32", "lengths (B,) int64 frames"],
                          "full": ["wavs (B, N) float32 16 kHz mono", "wav_lens (B,) int64 samples"]},
               "output": "embeddings (B, E) float32, not normalised",
               "scoring": "subtract mean, length-normalise, dot product", "mean": info["mean"],
               "calibration": info.get("calibration"), "threshold": info.get("threshold"),
               "layer_stack": info["layer_stack"], "upstream": info["upstream"]["name"]}
    atomic_write_text(f"{out}.json", json.dumps(sidecar, indent=1) + "\n")



if __name__ == "__main__":
    run_main(main)
