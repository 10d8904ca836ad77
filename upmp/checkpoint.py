"""The model files training writes and extraction reads: one home for their layout.

Every file is `torch.save` of a dict of tensors and plain data (str, int, float, bool, None,
lists, dicts: the config as a plain dict) and is read with `torch.load(weights_only=True)`, so a
file never runs code when loaded; a file that needs more is refused with one line.

    model.pt              format "upmp-model": config, layer_stack (LayerStackMeta fields), model (the
                          backend's state dict, no loss head), upstream ({name, ckpt, state} when the
                          upstream was fine-tuned; {name, ckpt, adapter, state} with a LoRA adapter
                          (train_conf.upstream_adapter): its conf and its tensors only; else absent),
                          speakers, num_params, train_seconds, step, world_size, inputs, valid_eer
                          (with validation)
    checkpoints/last.pt   format "upmp-train-state": model, head, optimizer, scheduler, scaler, step,
                          train_seconds, best_eer, best_step, upstream (state dict when fine-tuned;
                          the adapter's tensors with one), log_window ([loss, accuracy] of the steps
                          after the last log row, averaged over the processes)
    checkpoints/best.pt   format "upmp-best": model, upstream, step, eer
    checkpoints/step_<N>.pt  format "upmp-snapshot" (train_conf.keep_checkpoints / average): config,
                          model, head, upstream (when fine-tuned), step, eer (None when not validated
                          at that step); the weights checkpoint averaging reads

Each records `version` (FORMAT_VERSION); another version is refused with one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from upmp.errors import ModelFileError
from upmp.fileio import atomic_torch_save
from upmp.safe_load import load_torch_data
from upmp.data.layer_stacks import LayerStackMeta

FORMAT_VERSION = 1
MODEL, TRAIN_STATE, BEST, SNAPSHOT = "upmp-model", "upmp-train-state", "upmp-best", "upmp-snapshot"
_REQUIRED = {MODEL: ("config", "layer_stack", "model"),
             TRAIN_STATE: ("model", "head", "optimizer", "scheduler", "scaler", "step"),
             BEST: ("model", "step", "eer"),
             SNAPSHOT: ("config", "model", "head", "step", "eer")}
_WHAT = {MODEL: "a upmp model (model.pt)", TRAIN_STATE: "a upmp training checkpoint",
         BEST: "a upmp best-validation checkpoint", SNAPSHOT: "a upmp kept checkpoint (checkpoints/step_<N>.pt)"}


def weights(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A state dict detached from training: CPU copies of every tensor."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _write(path, kind: str, content: Dict[str, Any]) -> None:
    atomic_torch_save(dict(content, format=kind, version=FORMAT_VERSION), path)


def _read(path, kind: str, device="cpu") -> Dict[str, Any]:
    """The dict in a file of `kind`, checked; ModelFileError (one line) for anything else."""
    p, what = Path(path), _WHAT[kind]
    if not p.is_file():
        hint = "; train it first (stage 2)" if kind == MODEL else ""
        raise ModelFileError(f"{path}: not found; expected {what}{hint}")
    obj = load_torch_data(p, what, f"upmp never writes such files; expected {what}", map_location=device,
                          zip_only=True)
    if not isinstance(obj, dict) or obj.get("format") != kind:
        if isinstance(obj, dict) and "format" in obj:
            found = f"format {obj.get('format')!r}"
        elif isinstance(obj, dict) and all(k in obj for k in _REQUIRED[kind]):  # the layout before the tags
            found = ("no upmp format tag: written by upmp before 2026-12-01 (commit f48a2cd), whose files this "
                     "version does not read; retrain it, or use a upmp checkout older than f48a2cd")
        else:
            found = "no upmp format tag (not written by upmp)"
        raise ModelFileError(f"{path}: {found}; expected {what}")
    if obj.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: {what} of format version {obj.get('version')!r}; this upmp reads "
                             f"version {FORMAT_VERSION} only (retrain, or use the upmp that wrote it)")
    missing = [k for k in _REQUIRED[kind] if k not in obj]
    if missing:
        raise ModelFileError(f"{path}: incomplete {what}: missing {', '.join(missing)}")
    return obj


# model.pt

def save_model(path, content: Dict[str, Any]) -> None:
    """content: config, layer_stack, model, [upstream], and the training summary fields."""
    _write(path, MODEL, content)


def read_model(path, device="cpu") -> Dict[str, Any]:
    return _read(path, MODEL, device)


def build_model(backend: str, use_hidden0: bool, backend_conf: Dict[str, Any], meta: LayerStackMeta):
    """The backend a config names (its backend, use_hidden0 and backend_conf keys), sized for the layer stacks."""
    from upmp.backends import SpeakerEmbeddingModel
    return SpeakerEmbeddingModel(backend, meta.dim, meta.num_layers, use_hidden0=use_hidden0,
                                 backend_conf=backend_conf, has_hidden0=meta.layers is None or 0 in meta.layers)


def load_model(path: str, device: str = "cpu") -> Tuple[nn.Module, LayerStackMeta]:
    """model.pt -> (eval-mode model on device, layer-stack layout it expects).

    model.finetuned_upstream is {name, ckpt, state} when the upstream was fine-tuned, else None.
    """
    state = read_model(path, device)
    try:
        meta = LayerStackMeta(**state["layer_stack"])
        cfg = state["config"]  # the file's plain dict (any upmp version's): only the keys that build the model
        model = build_model(cfg["backend"], cfg["use_hidden0"], cfg["backend_conf"], meta)
        model.load_state_dict(state["model"])
    except (TypeError, KeyError, RuntimeError) as e:  # fields or weights that do not fit this upmp's model
        raise ModelFileError(f"{path}: its config / weights do not build a model here: "
                             f"{str(e).splitlines()[0]}") from None
    model.finetuned_upstream = state.get("upstream")
    return model.to(device).eval(), meta


def upstream_weights(upstream: nn.Module) -> Dict[str, Any]:
    """What a model file keeps of a trained upstream: {"state": every weight} when fine-tuned, or
    {"state": the adapter's tensors, "adapter": its conf} with a LoRA adapter (upmp.upstream.adapter)."""
    conf = getattr(upstream, "adapter", None)
    if conf is None:
        return {"state": weights(upstream)}
    from upmp.upstream.adapter import adapter_state
    return {"state": adapter_state(upstream), "adapter": dict(conf)}


def load_upstream_weights(upstream: nn.Module, state: Dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """upstream_weights' state back into the same upstream (with its adapter, when it has one)."""
    if getattr(upstream, "adapter", None) is None:
        upstream.load_state_dict(state)
    else:
        from upmp.upstream.adapter import load_adapter_state
        load_adapter_state(upstream, state, source)


def load_upstream(name: str, ckpt: Optional[str], device, finetuned: Optional[dict] = None):
    """The frozen upstream for extraction: built by name, with fine-tuned weights when given, or
    with its trained adapter merged into the weights (W + (alpha / r) B A: a plain upstream)."""
    from upmp.upstream import build_upstream
    upstream = build_upstream(name, ckpt)
    if finetuned is not None:
        if finetuned["name"] != name:
            raise ModelFileError(f"the model fine-tuned upstream {finetuned['name']!r}, not {name!r}")
        if finetuned.get("adapter") is not None:
            from upmp.upstream.adapter import add_adapter, merge_adapter
            add_adapter(upstream, finetuned["adapter"], f"upstream {name}")
            load_upstream_weights(upstream, finetuned["state"], f"the model's adapter on {name}")
            merge_adapter(upstream)
        else:
            upstream.load_state_dict(finetuned["state"])
    return upstream.to(device).freeze()


# checkpoints/last.pt and best.pt

def save_train_state(path, content: Dict[str, Any]) -> None:
    """content: model, head, optimizer, scheduler, scaler (state dicts), step, train_seconds,
    best_eer, best_step, log_window, [upstream]."""
    _write(path, TRAIN_STATE, content)


def read_train_state(path, device="cpu") -> Dict[str, Any]:
    return _read(path, TRAIN_STATE, device)


def save_best(path, content: Dict[str, Any]) -> None:
    """content: model, [upstream], step, eer."""
    _write(path, BEST, content)


def read_best(path, device="cpu") -> Dict[str, Any]:
    return _read(path, BEST, device)


# checkpoints/step_<N>.pt

def snapshot_path(exp_dir, step: int) -> Path:
    return Path(exp_dir) / "checkpoints" / f"step_{step:08d}.pt"


def save_snapshot(path, content: Dict[str, Any]) -> None:
    """content: config, model, head, [upstream], step, eer (None when not validated at that step)."""
    _write(path, SNAPSHOT, content)


def read_snapshot(path, device="cpu") -> Dict[str, Any]:
    return _read(path, SNAPSHOT, device)
