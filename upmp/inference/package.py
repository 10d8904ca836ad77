"""A packaged model: one self-contained directory with everything inference needs.

    <dir>/package.json    format and version, the resolved config, the layer-stack layout, the
                          upstream (name, provider version, copied checkpoint), the training-set
                          mean embedding, the calibration (score -> LLR) and the EER threshold of
                          the validation list, metrics, and the SHA-256 of every other file
    <dir>/config.yaml     the resolved training config (the same as in package.json, for reading)
    <dir>/backend.pt      the backend's state dict (tensors only)
    <dir>/upstream.pt     the fine-tuned upstream's state dict (only when it was fine-tuned)
    <dir>/upstream/       the upstream checkpoint file or HF directory (`*_local`, `hf:<dir>`)
    <dir>/README.md       the model card

Everything loads with json / yaml.safe_load / torch.load(weights_only=True). The score is the
cosine after subtracting the training-set mean (`CosineScorer(subtract_mean=True)`, as
`upmp.bin.score --subtract_mean`); the calibration and the threshold are fitted on the
validation trials scored that way, so they belong to that score.

An experiment directory (exp/<name> after stages 2-3) is collected into the same in-memory
form by `collect_experiment`, so `upmp.load_model` takes either.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import yaml

from upmp.errors import ModelFileError
from upmp.fileio import atomic_write_text, torch_save

logger = logging.getLogger(__name__)

FORMAT = "upmp-model-package"
FORMAT_VERSION = 1
MANIFEST = "package.json"


def eer_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold at the EER (accept when score >= t), interpolated between the two
    thresholds whose operating points bracket P_miss = P_fa, as compute_eer interpolates the rate."""
    from upmp.metrics import operating_points
    scores = np.asarray(scores, dtype=np.float64)
    p_miss, p_fa = operating_points(scores, labels)
    thresholds = np.r_[np.unique(scores), np.inf]  # the thresholds of operating_points, in order
    k = int(np.argmax(p_miss >= p_fa))
    m0, f0, m1, f1 = p_miss[k - 1], p_fa[k - 1], p_miss[k], p_fa[k]
    alpha = (f0 - m0) / ((m1 - m0) - (f1 - f0))
    t0, t1 = thresholds[k - 1], thresholds[k]
    return float(t0 if not np.isfinite(t1) else t0 + alpha * (t1 - t0))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_vectors(scp: Path) -> Dict[str, np.ndarray]:
    from upmp.scoring.io import read_vectors
    if not scp.is_file():
        raise ModelFileError(f"{scp}: missing; extract the embeddings first (stage 3)")
    return {utt: v for _, utt, v in read_vectors(str(scp))}


def _resolve(path: str, exp: Path) -> Optional[Path]:
    """A path recorded by training (relative to the recipe dir): as given, else from exp/../.."""
    for p in (Path(path), exp.parent.parent / path):
        if p.exists():
            return p.resolve()
    return None


def _set_name(path: Optional[str]) -> Optional[str]:
    """data/<set>, data/<set>/trials or dump/<up>/<set>/layers.scp -> <set>."""
    if not path:
        return None
    p = Path(path)
    return p.parent.name if p.suffix in (".scp",) or p.name == "trials" else p.name


def _upstream_entry(inputs: dict, exp: Path, layer_upstream: str) -> dict:
    """What the package records about the upstream; `source` is the file or dir to copy in."""
    name = inputs.get("upstream") or layer_upstream
    ckpt = inputs.get("upstream_ckpt")
    entry: Dict[str, Any] = {"name": name, "ckpt": None, "source": None}
    if name.startswith("hf:"):
        src = _resolve(name[3:], exp)
        if src is None:
            raise ModelFileError(f"{exp}: the upstream directory {name[3:]!r} is not found; "
                                 "run from the recipe dir or give --upstream_ckpt")
        entry.update(source=src, ckpt="upstream/hf", provider="transformers")
    elif ckpt:
        src = _resolve(ckpt, exp)
        if src is None:
            raise ModelFileError(f"{exp}: the upstream checkpoint {ckpt!r} is not found; run from the recipe dir")
        entry.update(source=src, ckpt=f"upstream/{src.name}", provider="s3prl" if name != "ge2e" else "ge2e")
    elif name.endswith("_local"):
        raise ModelFileError(f"{exp}: the upstream {name} was trained from a local checkpoint that the experiment "
                             "does not record (cached layer stacks); give it with --upstream_ckpt")
    elif name == "ge2e":
        entry["provider"] = "resemblyzer (weights in the pinned wheel)"
    else:
        entry["provider"] = "s3prl hub"
    import importlib.metadata as md
    for dist in ("espnet-s3prl", "transformers", "resemblyzer"):
        try:
            entry.setdefault("versions", {})[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return entry


def collect_experiment(exp_dir: str, model_path: Optional[str] = None, train_embeddings: Optional[str] = None,
                       valid_embeddings: Optional[str] = None, valid_trials: Optional[str] = None,
                       load_checkpoint=None, upstream: Optional[str] = None,
                       upstream_ckpt: Optional[str] = None) -> Dict[str, Any]:
    """exp/<name> (model.pt, config.yaml, train_summary.json, embeddings/) -> the package content:
    {"info": manifest dict, "backend": state dict, "upstream_state": state dict or None,
     "upstream_source": path to copy or None}. `load_checkpoint(path) -> (model, meta)`."""
    from upmp.scoring.calibration import LinearCalibration
    from upmp.scoring.scorers import CosineScorer, score_trials
    from upmp.metrics import compute_eer
    exp = Path(exp_dir)
    model_path = Path(model_path) if model_path else exp / "model.pt"
    for need in (model_path, exp / "config.yaml"):
        if not need.is_file():
            raise ModelFileError(f"{need}: missing; {exp} is not a trained experiment (run stage 2)")
    model, meta = load_checkpoint(str(model_path))
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    summary_path = exp / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    inputs = summary.get("inputs", {})
    finetuned = model.finetuned_upstream
    if finetuned is not None:
        inputs = dict(inputs, upstream=finetuned["name"], upstream_ckpt=finetuned.get("ckpt"))
    if upstream or upstream_ckpt:  # cached training records the upstream's name only (layer_stack.json)
        inputs = dict(inputs, upstream=upstream or inputs.get("upstream") or meta.upstream,
                      upstream_ckpt=upstream_ckpt or inputs.get("upstream_ckpt"))
    upstream = _upstream_entry(inputs, exp, meta.upstream)

    train_set = _set_name(inputs.get("train_scp") or inputs.get("train_data_dir"))
    train_scp = Path(train_embeddings) if train_embeddings else exp / "embeddings" / str(train_set) / "xvector.scp"
    X = np.stack(list(_load_vectors(train_scp).values()))
    scorer = CosineScorer(subtract_mean=True).fit(X)

    calibration = threshold = None
    trials_path = valid_trials or inputs.get("valid_trials")
    if trials_path:
        trials_file = _resolve(trials_path, exp)
        if trials_file is None:
            raise ModelFileError(f"{exp}: the validation trials {trials_path!r} are not found; give --valid_trials")
        from upmp.data.trials import read_kaldi_trials
        trials = read_kaldi_trials(str(trials_file))
        v_scp = Path(valid_embeddings) if valid_embeddings else \
            exp / "embeddings" / str(_set_name(str(trials_file))) / "xvector.scp"
        scores = score_trials(scorer, _load_vectors(v_scp), trials, source=str(v_scp))
        labels = np.array([t for _, _, t in trials], dtype=bool)
        cal = LinearCalibration.fit(scores, labels)
        calibration = {"scale": cal.scale, "offset": cal.offset, "trials": str(trials_path), "num_trials": len(trials)}
        threshold = {"score": eer_threshold(scores, labels), "eer": 100 * compute_eer(scores, labels),
                     "trials": str(trials_path)}
    else:
        logger.warning("%s: no validation list: the package has no calibration and no decision threshold", exp)

    results_path = exp / "results.json"
    results = json.loads(results_path.read_text()).get("results", {}) if results_path.is_file() else {}
    versions_path = exp / "versions.json"
    __version__ = sys.modules["upmp"].__version__  # the root package is loaded before any submodule
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "upmp_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "experiment": exp.resolve().name,
        "config": cfg, "layer_stack": {k: v for k, v in vars(meta).items()},
        "embed_dim": int(model.embed_dim), "num_params": summary.get("num_params"),
        "upstream": {k: v for k, v in upstream.items() if k != "source"},
        "finetuned_upstream": finetuned is not None,
        "train_set": train_set, "num_train_embeddings": int(len(X)),
        "num_speakers": summary.get("num_speakers"), "step": summary.get("step"),
        "valid_eer": summary.get("valid_eer"),
        "scoring": "cosine after subtracting the training-set mean",
        "mean": [float(v) for v in scorer.mean], "calibration": calibration, "threshold": threshold,
        "results": results,
        "train_versions": json.loads(versions_path.read_text()) if versions_path.is_file() else {},
    }
    return {"info": info, "backend": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "upstream_state": finetuned["state"] if finetuned is not None else None,
            "upstream_source": upstream["source"]}


def model_card(info: Dict[str, Any]) -> str:
    up = info["upstream"]
    lines = [f"# upmp model: {info['experiment']}", "",
             f"- created {info['created']} with upmp {info['upmp_version']} (package format {info['format_version']})",
             f"- backend: {info['config']['backend']} ({info.get('num_params') or '?'} trainable parameters, "
             f"{info['embed_dim']}-d embeddings)",
             f"- upstream: {up['name']}{' (fine-tuned, weights in upstream.pt)' if info['finetuned_upstream'] else ' (frozen)'}"
             f"; {up.get('provider', '')}" + (f"; checkpoint {up['ckpt']}" if up.get("ckpt") else ""),
             f"- layer stack: L = {info['layer_stack']['num_layers']} x D = {info['layer_stack']['dim']}, "
             f"{1000 * info['layer_stack']['frame_shift']:g} ms frames",
             f"- training data: {info['train_set']} ({info.get('num_speakers') or '?'} speakers, "
             f"{info['num_train_embeddings']} utterances for the mean embedding); selected step {info.get('step')}",
             f"- score: {info['scoring']}"]
    if info["threshold"]:
        t, c = info["threshold"], info["calibration"]
        lines.append(f"- validation ({t['trials']}, {c['num_trials']} trials): EER {t['eer']:.2f} % at score "
                     f"threshold {t['score']:.4f}; calibration llr = {c['scale']:.4f} * score + {c['offset']:.4f}")
    else:
        lines.append("- no validation list: no calibration, no decision threshold")
    if info["results"]:
        lines += ["", "| test set / system | EER (%) | minDCF (0.01) | minDCF (0.05) |", "|---|---|---|---|"]
        lines += [f"| {k} | {m['eer']:.2f} | {m['mindcf_0.01']:.4f} | {m['mindcf_0.05']:.4f} |"
                  for k, m in info["results"].items()]
        lines.append("(test results as written by stage 5, with the recipe's scoring)")
    v = info.get("train_versions", {})
    if v:
        lines += ["", "Trained with " + ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "s3prl", "numpy") if k in v)]
    lines += ["", "```python", "import upmp", "model = upmp.load_model(\"<this dir>\")",
              "print(model.verify(\"a.wav\", \"b.wav\"))", "```", ""]
    return "\n".join(lines)


def write_package(content: Dict[str, Any], out: str) -> Path:
    """Write collect_experiment's content into `out` (created; an existing package is replaced
    only once the new one is complete)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _fill_and_move(content, out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps no half package
        raise


def _fill_and_move(content: Dict[str, Any], out: Path, tmp: Path) -> Path:
    info = dict(content["info"])
    torch_save(content["backend"], tmp / "backend.pt")
    if content["upstream_state"] is not None:
        torch_save({k: v.detach().cpu() for k, v in content["upstream_state"].items()}, tmp / "upstream.pt")
    src = content["upstream_source"]
    if src is not None:
        dest = tmp / info["upstream"]["ckpt"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dest)
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(info["config"], sort_keys=False))
    info["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    atomic_write_text(tmp / MANIFEST, json.dumps(info, indent=1) + "\n")
    atomic_write_text(tmp / "README.md", model_card(info))
    for f in tmp.rglob("*"):  # a package is for sharing: readable by all (mkstemp makes files 0600)
        f.chmod(0o755 if f.is_dir() else 0o644)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def read_package(directory: str) -> Dict[str, Any]:
    """A package dir -> the same content as collect_experiment (upstream checkpoint resolved to
    its path inside the package). Another format version, a missing file or a changed file is a
    ModelFileError."""
    import torch
    d = Path(directory)
    manifest = d / MANIFEST
    if not manifest.is_file():
        raise ModelFileError(f"{d}: not a model package (no {MANIFEST}); "
                             "write one with python -m upmp.bin.package_model")
    try:
        info = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{manifest}: corrupted ({e}); package the model again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelFileError(f"{manifest}: not a upmp model package (format {info.get('format') if isinstance(info, dict) else None!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{manifest}: package format version {info.get('format_version')} (upmp "
                             f"{info.get('upmp_version')}), this upmp reads version {FORMAT_VERSION}; "
                             "package the experiment again with this upmp (python -m upmp.bin.package_model)")
    for name, digest in info.get("files", {}).items():
        path = d / name
        if not path.is_file():
            raise ModelFileError(f"{path}: missing from the package; package the model again")
        if _sha256(path) != digest:
            raise ModelFileError(f"{path}: corrupted (checksum differs from {MANIFEST}); package the model again")
    if "backend.pt" not in info.get("files", {}):
        raise ModelFileError(f"{manifest}: lists no backend.pt; package the model again")
    backend = torch.load(d / "backend.pt", map_location="cpu", weights_only=True)
    up_state = torch.load(d / "upstream.pt", map_location="cpu", weights_only=True) \
        if (d / "upstream.pt").is_file() else None
    ckpt = info["upstream"].get("ckpt")
    return {"info": info, "backend": backend, "upstream_state": up_state,
            "upstream_source": (d / ckpt) if ckpt else None}
