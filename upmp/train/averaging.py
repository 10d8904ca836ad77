"""Checkpoint averaging: the arithmetic mean of the weights of several checkpoints of one run
(WeSpeaker's average_model.py; a cheap, often better final model than any single checkpoint).

    train_conf.keep_checkpoints K   checkpoints/step_<N>.pt (upmp.checkpoint "upmp-snapshot") written at
                                    every checkpoint (ckpt_every) and validation (valid_every) step; the
                                    last K and the K with the best validation EER are kept
    train_conf.average {last: N}    model_avg.pt at the end of training: the mean of the last N kept
                   {best: N}        ... or of the N with the best validation EER (keeps max(K, N))
    python -m upmp.bin.average_checkpoints --exp exp/<name> --last N | --best N | <files> --out <file>

Every floating-point tensor of the state dicts is averaged, the batch-norm running means and
variances included (they are averaged like the weights, not recomputed on training batches); integer
buffers (batch-norm's num_batches_tracked) are the newest checkpoint's. The loss head and a
fine-tuned upstream are averaged the same way. model_avg.pt is a model.pt (same format and
metadata, `averaged` naming the steps and files; `valid_eer` its own validation EER when measured).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import upmp.checkpoint as checkpoint
from upmp.errors import ConfigError, ModelFileError
from upmp.train.schema import AverageConf, TrainConf, TrainConfig

logger = logging.getLogger(__name__)


def snapshot_steps(tc: TrainConf, validating: bool) -> List[int]:
    """The steps at which a run writes checkpoints/step_<N>.pt (when it keeps any)."""
    steps = tc.steps
    due = set(range(tc.ckpt_every, steps + 1, tc.ckpt_every)) | {steps}
    if validating and tc.valid_every > 0:
        due |= set(range(tc.valid_every, steps + 1, tc.valid_every))
    return sorted(due)


def check_average(tc: TrainConf, validating: bool) -> None:
    """One line when train_conf.average asks for more checkpoints than the run will keep."""
    avg = tc.average
    if avg is None:
        return
    if avg.best and not validating:
        raise ConfigError(f"train_conf.average best: {avg.best} needs a validation EER per checkpoint: give "
                          "--valid_trials (and --valid_scp / --valid_data_dir) with train_conf.valid_every > 0, "
                          "or use average last: N")
    n, kind = (avg.last, "last") if avg.last else (avg.best, "best")
    if kind == "last":
        have, what = len(snapshot_steps(tc, validating)), "checkpoint / validation steps"
    else:
        have, what = len(snapshot_steps(replace(tc, ckpt_every=tc.steps + 1), True)), "validation steps"
    if n > have:
        raise ConfigError(f"train_conf.average {kind}: {n} is more than the {have} {what} this run has "
                          f"(train_conf.steps {tc.steps}, ckpt_every {tc.ckpt_every}, valid_every "
                          f"{tc.valid_every}); lower N or checkpoint more often")


class Snapshots:
    """The kept checkpoints of a run (checkpoints/step_<N>.pt): written, indexed, pruned (rank 0)."""

    def __init__(self, exp: Path, cfg: TrainConfig, validating: bool):
        tc = cfg.train_conf
        check_average(tc, validating)
        avg = tc.average or AverageConf()
        self.keep = max(tc.keep_checkpoints, avg.last, avg.best)
        self.exp, self.due_steps = exp, set(snapshot_steps(tc, validating)) if self.keep else set()
        self.index: Optional[Dict[int, Optional[float]]] = None  # step -> validation EER (None: not validated)

    def due(self, done: int) -> bool:
        return done in self.due_steps

    def _load_index(self) -> Dict[int, Optional[float]]:
        if self.index is None:  # a resumed run: the files an earlier process kept
            self.index = {}
            for p in sorted((self.exp / "checkpoints").glob("step_*.pt")):
                snap = checkpoint.read_snapshot(p)
                self.index[snap["step"]] = snap["eer"]
        return self.index

    def save(self, step: int, content: Dict[str, Any]) -> None:
        index = self._load_index()
        checkpoint.save_snapshot(checkpoint.snapshot_path(self.exp, step), content)
        index[step] = content["eer"]
        keep = set(sorted(index)[-self.keep:])
        keep |= {s for _, s in sorted((e, s) for s, e in index.items() if e is not None)[:self.keep]}
        for s in [s for s in index if s not in keep]:
            checkpoint.snapshot_path(self.exp, s).unlink(missing_ok=True)
            del index[s]

    def select(self, average: AverageConf) -> List[Path]:
        """The kept checkpoints train_conf.average names."""
        return select_checkpoints(self.exp, last=average.last, best=average.best, index=self._load_index())


def select_checkpoints(exp: Path, last: int = 0, best: int = 0,
                       index: Optional[Dict[int, Optional[float]]] = None) -> List[Path]:
    """The kept checkpoints of exp: the last N by step, or the N with the lowest validation EER."""
    if index is None:
        index = {}
        for p in sorted((Path(exp) / "checkpoints").glob("step_*.pt")):
            snap = checkpoint.read_snapshot(p)
            index[snap["step"]] = snap["eer"]
    if last:
        chosen, have = sorted(index)[-last:], len(index)
    else:
        ranked = sorted((e, s) for s, e in index.items() if e is not None)
        chosen, have = [s for _, s in ranked[:best]], len(ranked)
    n = last or best
    if n > have:
        what = "kept checkpoints" if last else "kept checkpoints with a validation EER"
        raise ConfigError(f"{exp}: {'last' if last else 'best'} {n} asks for more than the {have} {what} "
                          f"(checkpoints/step_<N>.pt; train with train_conf.keep_checkpoints >= {n})")
    return [checkpoint.snapshot_path(exp, s) for s in sorted(chosen)]


def average_state_dicts(states: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of state dicts of one architecture (floating-point tensors summed in
    float64, returned in their dtype); integer tensors (step counters) from the last state dict."""
    out: Dict[str, torch.Tensor] = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            total = sum(s[key].to(torch.float64) for s in states)
            out[key] = (total / len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def _flat(node, prefix=""):
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def _read_weights(path: Path) -> Dict[str, Any]:
    """A kept checkpoint, or a model.pt-format file (model.pt, model_last.pt) of the experiment."""
    try:
        return checkpoint.read_snapshot(path)
    except ModelFileError as first:
        try:
            return checkpoint.read_model(path)
        except ModelFileError:
            raise first from None


def _check_same(ref_path: Path, ref: Dict[str, Any], path: Path, other: Dict[str, Any], parts: Sequence[str]) -> None:
    """One line when two files do not hold the same config and architecture (the weights of parts)."""
    from upmp.train.trainer import _RUN_ONLY
    a, b = _flat(ref["config"]), _flat(other["config"])
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[-1] not in _RUN_ONLY)
    if diff:
        raise ModelFileError(f"{path}: another config than {ref_path} ({diff[0]} = {b.get(diff[0])!r} there, "
                             f"{a.get(diff[0])!r} here); average checkpoints of one experiment only")
    for part in parts:
        x, y = ref.get(part), other.get(part)
        if (x is None) != (y is None):
            raise ModelFileError(f"{path}: {'no' if y is None else 'a'} {part} where {ref_path} has "
                                 f"{'one' if y is None else 'none'}; average checkpoints of one kind only")
        if x is not None and {k: tuple(v.shape) for k, v in x.items()} != {k: tuple(v.shape) for k, v in y.items()}:
            raise ModelFileError(f"{path}: its {part} weights have other names / shapes than {ref_path}'s; "
                                 "average checkpoints of one architecture only")


def average_checkpoints(exp: Path, paths: Sequence[Path], base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The content of a model.pt with the mean weights of the files; its metadata (and the config and
    architecture the files must have) are base's, by default exp/model.pt's."""
    exp = Path(exp)
    if not paths:
        raise ConfigError(f"{exp}: no checkpoints to average")
    base_path = exp / "model.pt"
    if base is None:
        base = checkpoint.read_model(base_path)
    items: List[Tuple[Path, Dict[str, Any]]] = []
    for p in paths:
        w = _read_weights(Path(p))
        _check_same(base_path, base, Path(p), w, ["model"])
        if items:
            _check_same(items[0][0], items[0][1], Path(p), w, ["head"])
        items.append((Path(p), w))
    items.sort(key=lambda pw: pw[1].get("step", 0))  # the newest last (its integer buffers are kept)
    content = {k: v for k, v in base.items() if k not in ("format", "version", "valid_eer", "head", "upstream")}
    content["model"] = average_state_dicts([w["model"] for _, w in items])
    if all(w.get("head") is not None for _, w in items):
        content["head"] = average_state_dicts([w["head"] for _, w in items])
    ups = [w.get("upstream") for _, w in items]
    if any(u is not None for u in ups):
        if any(u is None or u["name"] != ups[0]["name"] for u in ups):
            raise ModelFileError(f"{exp}: the checkpoints do not all hold the same fine-tuned upstream")
        content["upstream"] = dict(ups[-1], state=average_state_dicts([u["state"] for u in ups]))
    content["step"] = items[-1][1].get("step")
    content["averaged"] = {"steps": [w.get("step") for _, w in items], "files": [str(p) for p, _ in items]}
    return content
