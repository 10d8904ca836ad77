"""A packaged model: one self-contained directory with everything inference needs.

    <dir>/package.json    format and version, the resolved config, the layer-stack layout, the
                          upstream (name, provider version, copied checkpoint), the training-set
                          mean embedding, the calibration (score -> LLR) and the EER threshold of
                          the validation list, metrics, and the SHA-256 of every other file
    <dir>/config.yaml     the resolved training config (the same as in package.json, for reading)
    <dir>/backend.pt      the backend's state dict (tensors only)
    <dir>/upstream.pt     the fine-tuned upstream's state dict (only when it was fine-tuned; a LoRA
                          adapter is merged into the upstream's weights here)
    <dir>/upstream/       the upstream checkpoint file or HF directory (`*_local`, `hf:<dir>`)
    <dir>/README.md       the model card

    <dir>/package.json.sha256   the SHA-256 of package.json (sha256sum format)

Everything loads with json / yaml.safe_load / torch.load(weights_only=True), and read_package
checks all of it before anything is used: package.json's checksum and its typed schema (MANIFEST_SCHEMA:
no unknown or missing keys, finite numbers), every file's checksum, every path inside the package
(no `..`, absolute paths or links out of it), the upstream checkpoint among the hashed files and
loadable as data (S3PRL unpickles it fully later). The score is the
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
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import yaml

from upmp.errors import ModelFileError, OutputError
from upmp.fileio import atomic_write_text, building_dir, file_sha256, torch_save
from upmp.safe_load import check_checkpoint, load_torch_data

logger = logging.getLogger(__name__)

FORMAT = "upmp-model-package"
FORMAT_VERSION = 1
MANIFEST = "package.json"
MANIFEST_SUM = "package.json.sha256"
PACKAGE_AGAIN = "package the model again (python -m upmp.bin.package_model)"

# package.json, key by key: a type name ("str", "int", "num": a finite int or float, "bool", "dict",
# "sha256"), None (null allowed), a tuple of alternatives, ("list", spec), ("map", spec): a dict of
# str keys, or a dict of the keys an object holds ("key?": optional). write_package and read_package
# both check it: a key added to collect_experiment's info goes here too.
_CALIBRATION = {"scale": "num", "offset": "num", "trials": "str", "num_trials": "int"}
_THRESHOLD = {"score": "num", "eer": "num", "trials": "str"}
MANIFEST_SCHEMA = {
    "format": "str", "format_version": "int", "upmp_version": "str", "created": "str", "experiment": "str",
    "config": {"backend": "str", "use_hidden0": "bool", "backend_conf": "dict", "*": "any"},
    "layer_stack": {"num_layers": "int", "dim": "int", "frame_shift": "num", "upstream": "str", "storage?": "str",
                    "layers?": (("list", "int"), None), "weights_sha256?": ("str", None), "layout?": "str"},
    "embed_dim": "int", "num_params?": ("int", None),
    "upstream": {"name": "str", "ckpt": ("str", None), "provider?": "str", "versions?": ("map", "str")},
    "finetuned_upstream": "bool", "train_set": ("str", None), "num_train_embeddings": "int",
    "num_speakers?": ("int", None), "step?": ("int", None), "valid_eer?": ("num", None), "scoring": "str",
    "mean": ("list", "num"), "calibration": (_CALIBRATION, None), "threshold": (_THRESHOLD, None),
    "results": ("map", "dict"), "train_versions?": ("map", "str"), "files": ("map", "sha256"),
}


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


def _load_vectors(scp: Path, exp: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """An xvector.scp -> {utt: vector}; ark paths relative to the recipe dir (as stage 3 writes them)
    are read from <exp>/../.. when they are not found from the current directory."""
    from upmp.scoring.io import read_vectors
    if not scp.is_file():
        raise ModelFileError(f"{scp}: missing; extract the embeddings first (stage 3)")
    recipe = exp.resolve().parent.parent if exp is not None else None
    return {utt: v for _, utt, v in read_vectors(str(scp), recipe)}


def _resolve(path: str, exp: Path) -> Optional[Path]:
    """A path recorded by training (relative to the recipe dir): as given, else from exp/../.."""
    for p in (Path(path), exp.resolve().parent.parent / path):
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
    if entry["source"] is not None:  # S3PRL / transformers may unpickle it fully: data only
        check_checkpoint(entry["source"], "an upstream checkpoint of tensors and plain data")
    import importlib.metadata as md
    for dist in ("espnet-s3prl", "transformers", "resemblyzer"):
        try:
            entry.setdefault("versions", {})[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return entry


def _check_same_weights(meta, upstream: dict, model_path: Path) -> None:
    """A model trained on cached stacks whose layer_stack.json names the upstream's weights (their
    SHA-256, upmp.upstream.extract.weights_id) is packaged with those weights, not other bytes under
    the same name: else a ModelFileError naming both digests."""
    from upmp.upstream.extract import weights_id
    wanted = meta.weights_sha256
    if wanted is None or upstream["source"] is None:
        return
    name = upstream["name"]
    got = weights_id(f"hf:{upstream['source']}") if name.startswith("hf:") else weights_id(name, str(upstream["source"]))
    if got != wanted:
        raise ModelFileError(f"{upstream['source']}: sha256 {got[:12]}..., but {model_path} was trained on layer "
                             f"stacks of {name} with weights sha256 {wanted[:12]}... (layer_stack.json): package it "
                             f"with the checkpoint those stacks were extracted with (--upstream_ckpt)")


def _check_embedded_by(model_path: Path, exp: Path, inputs: dict, used: Dict[str, Path]) -> None:
    """The training mean, calibration and threshold must come from embeddings of the model packaged:
    each xvector.scp used ({"train": scp, "valid": scp}) must have been made by model_path (stage 3's
    model.sha256 beside it); without a record only <exp>/model.pt is trusted (what stage 3 embeds).
    Otherwise a ModelFileError with the commands that extract them with model_path."""
    from upmp.embeddings import read_model_record
    default = model_path.resolve() == (exp / "model.pt").resolve()
    digest = None
    for role, scp in used.items():
        if not scp.is_file():
            continue  # missing: _load_vectors says so
        record = read_model_record(scp.parent)
        if record is None and default:
            continue
        digest = digest or file_sha256(model_path)
        if record is not None and record[0] == digest:
            continue
        made = (f"made by another model file ({record[1]}, sha256 {record[0][:12]}...)" if record is not None
                else "made by an unrecorded model (no model.sha256 beside it: stage 3 embeds model.pt)")
        out_root = exp / ("embeddings" if default else f"embeddings_{model_path.stem}")
        cmds, opts = [], []
        for r in used:
            src = ({"train": inputs.get("train_scp"), "valid": inputs.get("valid_scp")}[r], "--layers_scp")
            if not src[0]:
                src = ({"train": inputs.get("train_data_dir"), "valid": inputs.get("valid_data_dir")}[r], "--data_dir")
            set_name = used[r].parent.name
            if src[0] and src[1] == "--data_dir":
                up = inputs.get("upstream")
                src_opts = f"--data_dir {src[0]}" + (f" --upstream {up}" if up else "") + \
                    (f" --upstream_ckpt {inputs['upstream_ckpt']}" if inputs.get("upstream_ckpt") else "")
            else:
                src_opts = f"--layers_scp {src[0] or f'<layers.scp of {set_name}>'}"
            out_dir = out_root / set_name
            cmd = f"python -m upmp.bin.extract_embeddings --model {model_path} {src_opts} --out_dir {out_dir}"
            if cmd not in cmds:
                cmds.append(cmd)
            opts.append(f"--{r}_embeddings {out_dir / 'xvector.scp'}")
        raise ModelFileError(f"{scp}: the {role} embeddings were {made}, not by {model_path}: the training mean, "
                             f"calibration and threshold must come from the model packaged; extract them with it "
                             f"({' && '.join(cmds)}) and pass {' '.join(opts)}")


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
    _check_same_weights(meta, upstream, model_path)

    train_set = _set_name(inputs.get("train_scp") or inputs.get("train_data_dir"))
    train_scp = Path(train_embeddings) if train_embeddings else exp / "embeddings" / str(train_set) / "xvector.scp"
    valid_path = valid_trials or inputs.get("valid_trials")
    valid_file = _resolve(valid_path, exp) if valid_path else None
    used = {"train": train_scp}
    if valid_file is not None:
        used["valid"] = Path(valid_embeddings) if valid_embeddings else \
            exp / "embeddings" / str(_set_name(str(valid_file))) / "xvector.scp"
    _check_embedded_by(model_path, exp, inputs, used)
    X = np.stack(list(_load_vectors(train_scp, exp).values()))
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
        scores = score_trials(scorer, _load_vectors(v_scp, exp), trials, source=str(v_scp))
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
            "upstream_state": _upstream_state(finetuned, upstream), "upstream_source": upstream["source"]}


def _upstream_state(finetuned: Optional[dict], entry: dict) -> Optional[Dict[str, Any]]:
    """The trained upstream's full state dict: the fine-tuned weights, or a LoRA adapter merged into
    the upstream's (W + (alpha / r) B A), so a package runs without adapter code (upstream.pt)."""
    if finetuned is None or finetuned.get("adapter") is None:
        return finetuned["state"] if finetuned is not None else None
    from upmp.checkpoint import load_upstream
    name, src = entry["name"], entry["source"]
    if name.startswith("hf:") and src is not None:
        name, ckpt = f"hf:{src}", None
    else:
        ckpt = str(src) if src is not None else None
    upstream = load_upstream(name, ckpt, "cpu", dict(finetuned, name=name))
    return {k: v.detach().cpu() for k, v in upstream.state_dict().items()}


def _upstream_training(info: Dict[str, Any]) -> str:
    adapter = ((info["config"].get("train_conf") or {}).get("upstream_adapter")) if info["finetuned_upstream"] else None
    if adapter:
        return (f" (LoRA adapter, rank {adapter['rank']} alpha {adapter['alpha']:g} on "
                f"{', '.join(adapter['target_modules'])}, merged into the weights in upstream.pt)")
    return " (fine-tuned, weights in upstream.pt)" if info["finetuned_upstream"] else " (frozen)"


def model_card(info: Dict[str, Any]) -> str:
    up = info["upstream"]
    lines = [f"# upmp model: {info['experiment']}", "",
             f"- created {info['created']} with upmp {info['upmp_version']} (package format {info['format_version']})",
             f"- backend: {info['config']['backend']} ({info.get('num_params') or '?'} trainable parameters, "
             f"{info['embed_dim']}-d embeddings)",
             f"- upstream: {up['name']}{_upstream_training(info)}"
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


def _schema_problem(value, spec, where: str) -> Optional[str]:
    """None when value fits spec (see MANIFEST_SCHEMA), else '<where>: <what is wrong>'."""
    if spec is None or isinstance(spec, tuple) and spec[0] not in ("list", "map"):  # alternatives
        alternatives = spec if isinstance(spec, tuple) else (None,)
        if value is None and None in alternatives:
            return None
        problems = [_schema_problem(value, alt, where) for alt in alternatives if alt is not None]
        return None if None in problems else (problems[0] if problems else f"{where}: expected null")
    if isinstance(spec, tuple):  # ("list", element) or ("map", value)
        kind, inner = spec
        if not isinstance(value, list if kind == "list" else dict):
            return f"{where}: expected a {'list' if kind == 'list' else 'JSON object'}, got {type(value).__name__}"
        items = enumerate(value) if kind == "list" else value.items()
        return next((p for k, v in items if (p := _schema_problem(v, inner, f"{where}[{json.dumps(k)}]"))), None)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where or 'top level'}: expected a JSON object, got {type(value).__name__}"
        keys = {k.rstrip("?"): k.endswith("?") for k in spec if k != "*"}
        missing = [k for k, optional in keys.items() if not optional and k not in value]
        if missing:
            return f"{where or 'top level'}: missing key {missing[0]!r}"
        unknown = [k for k in value if k not in keys]
        if unknown and "*" not in spec:
            return f"{where or 'top level'}: unknown key {unknown[0]!r}"
        return next((p for k, v in value.items() if k in keys
                     and (p := _schema_problem(v, spec[k + "?" if keys[k] else k], f"{where}.{k}".lstrip(".")))),
                    None)
    if spec == "any":
        return None
    if spec == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where}: expected a number, got {json.dumps(value)[:40]}"
        return None if math.isfinite(value) else f"{where}: {value} is not a finite number"
    if spec == "sha256":
        ok = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
        return None if ok else f"{where}: expected a SHA-256 hex digest, got {json.dumps(value)[:40]}"
    types = {"str": str, "int": int, "bool": bool, "dict": dict}[spec]
    if not isinstance(value, types) or (spec == "int" and isinstance(value, bool)):
        return f"{where}: expected {'an' if spec == 'int' else 'a'} {spec}, got {json.dumps(value)[:40]}"
    return None


def check_manifest(info: Any, where: str) -> None:
    """package.json's content against MANIFEST_SCHEMA (+ the mean's length); one ModelFileError line."""
    problem = _schema_problem(info, MANIFEST_SCHEMA, "")
    if problem is None and len(info["mean"]) != info["embed_dim"]:
        problem = f"mean: {len(info['mean'])} values for embed_dim {info['embed_dim']}"
    if problem is not None:
        raise ModelFileError(f"{where}: {problem}; not a package this upmp writes: {PACKAGE_AGAIN}")


def _inside(d: Path, name: str, where: str) -> Path:
    """d / name, refused unless a relative path that stays inside d (symlinks resolved)."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts or not (d / p).resolve().is_relative_to(d.resolve()):
        raise ModelFileError(f"{where}: the path {name!r} leads outside the package; a package names only its "
                             f"own files: {PACKAGE_AGAIN}")
    return d / p


def check_out(out: str, exp_dir: Optional[str] = None) -> Path:
    """Refuse a package --out that would replace what package_model did not write: the
    experiment, a directory inside it or above it, the recipe dir, the current directory, the
    file system root, a file, or a non-empty directory that is not a package (OutputError)."""
    o = Path(out).resolve()
    advice = "give a new directory (e.g. models/<name>)"
    if o == Path(o.anchor):
        raise OutputError(f"--out {out} is the file system root; {advice}")
    if o == Path.cwd().resolve():
        raise OutputError(f"--out {out} is the current directory; {advice}")
    if exp_dir is not None:
        exp = Path(exp_dir).resolve()
        if o == exp or o in exp.parents:
            where = "the experiment" if o == exp else \
                "the recipe dir of the experiment" if o == exp.parent.parent else "a directory holding the experiment"
            raise OutputError(f"--out {out} is {where} {exp_dir}; package_model replaces --out, {advice}")
        if exp in o.parents:
            raise OutputError(f"--out {out} is inside the experiment {exp_dir}; {advice} outside it")
    if o.exists() and not o.is_dir():
        raise OutputError(f"--out {out} is a file; {advice}")
    if o.is_dir() and any(o.iterdir()):
        if not _is_package(o):
            raise OutputError(f"--out {out} is a non-empty directory that is not a upmp model package (no {MANIFEST}); "
                              f"{advice}, or remove it first")
        extra = _foreign_files(o)
        if extra:
            raise OutputError(f"--out {out} holds {extra[0]}, which is not part of its package; "
                              f"move it out first (package_model replaces the whole directory) or {advice}")
    return o


def _is_package(d: Path) -> bool:
    try:
        info = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def _foreign_files(d: Path) -> list:
    """Files in a package dir that write_package did not write (a user's notes): replacing the
    package would delete them."""
    info = json.loads((d / MANIFEST).read_text())
    files = info.get("files") if isinstance(info.get("files"), dict) else {}
    ours = set(files) | {MANIFEST, MANIFEST_SUM, "README.md"}
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.is_dir() and str(p.relative_to(d)) not in ours)


def remove_stale_temps(out: str) -> None:
    """The temporary directories of write_package runs that were killed (call with the lock on
    `out` held: no other run is writing them): .<name>.tmp.* and replace_dir's .<name>.old.*."""
    out = Path(out)
    for pattern in (f".{out.name}.tmp.*", f".{out.name}.old.*"):
        for d in out.parent.glob(pattern):
            shutil.rmtree(d, ignore_errors=True)


def write_package(content: Dict[str, Any], out: str) -> Path:
    """Write collect_experiment's content into `out`: built in a temporary directory beside it,
    then swapped in whole (`upmp.fileio.building_dir`), so an earlier package is replaced only by
    a complete one. A non-empty `out` that is not a package is refused (check_out)."""
    out = Path(out)
    check_out(str(out))
    with building_dir(out, "tmp") as tmp:  # unique per process; swapped in whole once complete
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
        info["files"] = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        check_manifest(info, f"{out}/{MANIFEST}")  # never write a package that read_package refuses
        manifest_text = json.dumps(info, indent=1, allow_nan=False) + "\n"
        atomic_write_text(tmp / MANIFEST, manifest_text)
        atomic_write_text(tmp / MANIFEST_SUM, f"{hashlib.sha256(manifest_text.encode()).hexdigest()}  {MANIFEST}\n")
        atomic_write_text(tmp / "README.md", model_card(info))
        for f in [tmp, *tmp.rglob("*")]:  # a package is for sharing: readable by all (mkstemp makes files 0600)
            f.chmod(0o755 if f.is_dir() else 0o644)
    return out


def _check_manifest_sum(d: Path, manifest: Path) -> None:
    """package.json against package.json.sha256 (a flipped bit in a number is not a JSON error)."""
    sum_file = d / MANIFEST_SUM
    if not sum_file.is_file():
        raise ModelFileError(f"{sum_file}: missing from the package (packages of upmp before this check have none); "
                             f"{PACKAGE_AGAIN}")
    want = sum_file.read_text(errors="replace").split(maxsplit=1)[:1]
    if want != [file_sha256(manifest)]:
        raise ModelFileError(f"{manifest}: corrupted (checksum differs from {MANIFEST_SUM}); {PACKAGE_AGAIN}")


def _read_state_dict(path: Path, what: str) -> Dict[str, Any]:
    """backend.pt / upstream.pt: a dict of tensors, loaded as data; anything else is one line."""
    import torch
    expected = f"{what}: a state dict of tensors; {PACKAGE_AGAIN}"
    state = load_torch_data(path, expected, f"package_model never writes such files: do not use this package; "
                            f"{PACKAGE_AGAIN}", zip_only=True)
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        found = "an empty dict" if isinstance(state, dict) and not state else \
            "a dict of other values" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ModelFileError(f"{path}: holds {found}; expected {expected}")
    return state


def _check_upstream_ckpt(d: Path, ckpt: str, hashed: set, manifest: Path) -> None:
    """upstream.ckpt: inside the package, hashed (a file, or a directory whose files all are), data."""
    path = _inside(d, ckpt, f"{manifest}: upstream.ckpt")
    if path.is_dir():
        unhashed = [n for n in (str(f.relative_to(d)) for f in sorted(path.rglob("*")) if not f.is_dir())
                    if n not in hashed]
        problem = f"holds {unhashed[0]!r}, which is not" if unhashed else None
    else:
        problem = None if str(Path(ckpt)) in hashed else "is not"
    if problem:
        raise ModelFileError(f"{manifest}: upstream.ckpt {ckpt!r} {problem} among the package's hashed files; "
                             f"{PACKAGE_AGAIN}")
    check_checkpoint(path, "an upstream checkpoint of tensors and plain data",
                     f"package_model never packages such files: do not use this package; {PACKAGE_AGAIN}")


def read_package(directory: str) -> Dict[str, Any]:
    """A package dir -> the same content as collect_experiment (upstream checkpoint resolved to
    its path inside the package). Another format version, a missing file or a changed file is a
    ModelFileError."""
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
        found = info.get("format") if isinstance(info, dict) else None
        raise ModelFileError(f"{manifest}: not a upmp model package (format {found!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{manifest}: package format version {info.get('format_version')} (upmp "
                             f"{info.get('upmp_version')}), this upmp reads version {FORMAT_VERSION}; "
                             "package the experiment again with this upmp (python -m upmp.bin.package_model)")
    _check_manifest_sum(d, manifest)
    check_manifest(info, str(manifest))
    files = {name: _inside(d, name, f"{manifest}: files") for name in info["files"]}
    for name, digest in info["files"].items():
        path = files[name]
        if not path.is_file():
            raise ModelFileError(f"{path}: missing from the package; {PACKAGE_AGAIN}")
        if file_sha256(path) != digest:
            raise ModelFileError(f"{path}: corrupted (checksum differs from {MANIFEST}); {PACKAGE_AGAIN}")
    if "backend.pt" not in files:
        raise ModelFileError(f"{manifest}: lists no backend.pt; {PACKAGE_AGAIN}")
    backend = _read_state_dict(d / "backend.pt", "the backend's weights")
    if info["finetuned_upstream"] and "upstream.pt" not in files:
        raise ModelFileError(f"{manifest}: a fine-tuned upstream, but no upstream.pt among its files; {PACKAGE_AGAIN}")
    up_state = _read_state_dict(d / "upstream.pt", "the fine-tuned upstream's weights") \
        if info["finetuned_upstream"] else None
    ckpt = info["upstream"]["ckpt"]
    if ckpt:
        _check_upstream_ckpt(d, ckpt, {str(Path(n)) for n in files}, manifest)
    return {"info": info, "backend": backend, "upstream_state": up_state,
            "upstream_source": (d / ckpt) if ckpt else None}
