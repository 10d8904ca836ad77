"""The authors' checkpoints (UniPool-SV / L-TDNN model_best.pt, LAP model.state) as upmp experiments.

    import_checkpoint(src, kind, upstream, upstream_ckpt, out)   # -> out/{model.pt, config.yaml, ...}

What the authors' trainers save (read from their code):
- UniPool-SV and L-TDNN (src/benchmarks/<model>/trainer.py): `torch.save({epoch_no, rand_state,
  optimizer_state, scheduler_state, model_state, val_*})` to model_best.pt / model_ckpt.pt;
  model_state holds backbone.* (the transformers model), encoder.* (the speaker network),
  aam_softmax.weight (heads, E / heads, classes) and the span_mask_kernel buffer. rand_state holds
  numpy's random state (an ndarray): the only objects beyond tensors and plain data, allowed below.
- LAP (src/train/common.py save_checkpoint): <out>/<epoch>epoch/model.state, a state dict of
  frontend.* (the transformers model), backend.layer_aggregation.*, backend.speaker_network.* and
  aam_softmax.weight (sub-centres, E, classes); <out>/best_tracking.txt lists "epoch, EER%" best first.

A kind is one entry of _kinds(): our backend, where its weights sit in the file, how backend_conf
and our state dict come from them (the backend's `authors_layout` / `state_from_authors`; L-TDNN's
`authors_conf` / `from_authors_state`), and the loss head. The upstream's weights in the file
(backbone.* / frontend.*) are compared with --upstream's: equal means a frozen upstream (nothing
stored); different means it was fine-tuned, which is stored as a fine-tuned upstream when --upstream
hf:<dir> gives its architecture (transformers' key names).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import yaml

from upmp.checkpoint import build_model, save_model, weights
from upmp.data.layer_stacks import LayerStackMeta
from upmp.errors import ModelFileError, OutputError
from upmp.fileio import atomic_write_text, file_sha256, output_lock
from upmp.safe_load import load_torch_data

logger = logging.getLogger(__name__)


def _numpy_random_state_globals() -> list:
    """What numpy's random state (np.random.get_state(): an ndarray of uint32) needs to unpickle,
    under the names numpy 1.x (numpy.core) and 2.x (numpy._core) write: nothing that runs code."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def _aam_multihead(w: torch.Tensor, key: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """UniPool / L-TDNN Multiheaded_AAMsoftmax weight (heads, E / heads, classes) -> our
    AAMSoftmax(heads): head i's class weights (classes, E / heads) = w[i].T."""
    if w.dim() != 3:
        raise ModelFileError(f"{key}: shape {tuple(w.shape)}; expected (heads, E / heads, classes)")
    conf = {"margin": 0.2, "scale": 30.0, "heads": int(w.shape[0])}
    return conf, {f"heads.{i}.weight": w[i].t().contiguous() for i in range(w.shape[0])}


def _aam_subcenter(w: torch.Tensor, key: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """LAP AAMsoftmax_IntertopK_Subcenter weight (K, E, classes) -> our sub-centre head, whose row
    c * K + k is class c's sub-centre k. Margins as the LAP config (train_frozen.yaml)."""
    if w.dim() != 3:
        raise ModelFileError(f"{key}: shape {tuple(w.shape)}; expected (sub-centres, E, classes)")
    K, E, C = w.shape
    conf = {"margin": 0.3, "scale": 30.0, "heads": 1, "subcenters": int(K), "topk": 5, "topk_margin": 0.06}
    return conf, {"heads.0.weight": w.permute(2, 0, 1).reshape(C * K, E).contiguous()}


@dataclass(frozen=True)
class AuthorsKind:
    """How one kind of the authors' checkpoints maps onto upmp."""
    backend: str                   # our backend (upmp.backends.BACKENDS)
    use_hidden0: bool              # whether their network sees hidden state 0
    upstream_prefix: str           # the transformers model's weights in the file
    prefix: str                    # the speaker network's weights ("encoder.", "backend.")
    marker: str                    # a key only this kind's files hold (to name the right --kind)
    # their speaker network (prefix stripped) -> (input_dim D, num_layers L, backend_conf)
    layout: Callable[[Dict[str, torch.Tensor], str], Tuple[int, int, Dict[str, Any]]]
    # (our backend built from that layout, their weights, prefix) -> our backend's state dict; a
    # ModelFileError of one line naming the first key of theirs that does not fit
    state: Callable[[Any, Dict[str, torch.Tensor], str], Dict[str, torch.Tensor]]
    loss: str                      # our loss head (upmp.losses.LOSSES)
    # aam_softmax.weight -> (loss_conf, state)
    head: Callable[[torch.Tensor, str], Tuple[Dict[str, Any], Dict[str, torch.Tensor]]]
    ignored: Tuple[str, ...] = ()  # keys of the file that hold nothing of the model (buffers of training tricks)
    first_layers: bool = False     # the authors' n_layer N may keep only hidden states 0..N of a deeper upstream


def _ltdnn_kind(cls, marker: str) -> AuthorsKind:
    """An L-TDNN kind (github.com/sadPororo/L-TDNN: the UniPool-SV trainer's file, encoder.net /
    l_pool / t_pool, hidden states 0..n_layer): the backend's authors_conf / from_authors_state."""
    def layout(encoder: Dict[str, torch.Tensor], prefix: str) -> Tuple[int, int, Dict[str, Any]]:
        conf = cls.authors_conf(encoder)
        return int(conf["input_dim"]), int(conf["num_layers"]), conf["backend_conf"]

    def state(backend, encoder: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        return cls.from_authors_state(encoder)
    return AuthorsKind(cls.kind, True, "backbone.", "encoder.", marker, layout, state, "aamsoftmax", _aam_multihead,
                       ignored=("span_mask_kernel",), first_layers=True)


def _kinds() -> Dict[str, AuthorsKind]:
    from upmp.backends.lap import LAPBackend
    from upmp.backends.ltdnn import LTDNND3NetBackend, LTDNNEcapaBackend
    from upmp.backends.upmp import UPMPBackend
    return {
        "unipool": AuthorsKind("upmp", False, "backbone.", "encoder.", "encoder.d3net.projection.0.weight",
                               UPMPBackend.authors_layout, UPMPBackend.state_from_authors,
                               "aamsoftmax", _aam_multihead, ignored=("span_mask_kernel",)),
        # both L-TDNN kinds hold encoder.net.*: their blocks tell them apart
        "ltdnn_d3net": _ltdnn_kind(LTDNND3NetBackend, "encoder.net.se_d2blocks.0.se.se_attention.1.weight"),
        "ltdnn_ecapa": _ltdnn_kind(LTDNNEcapaBackend, "encoder.net.block1.se_res2block.0.conv.weight"),
        "lap": AuthorsKind("lap", True, "frontend.", "backend.", "backend.layer_aggregation.sq_weight",
                           LAPBackend.authors_layout, LAPBackend.state_from_authors,
                           "aamsoftmax_subcenter_topk", _aam_subcenter),
    }


KIND_NAMES = ("unipool", "ltdnn_d3net", "ltdnn_ecapa", "lap")  # the --kind choices: the keys of _kinds()


# Reading the file

def find_checkpoint(src: str) -> Path:
    """--from: a file (model_best.pt, model_ckpt.pt, model.state), a UniPool-SV / L-TDNN result dir
    (model_best.pt), a LAP epoch folder (model.state) or a LAP result dir (best_tracking.txt: the
    first line's epoch folder)."""
    p = Path(src)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ModelFileError(f"--from {src}: no such file or directory")
    for name in ("model_best.pt", "model.state"):
        if (p / name).is_file():
            return p / name
    tracking = p / "best_tracking.txt"
    if tracking.is_file():
        lines = [ln for ln in tracking.read_text().splitlines() if ln.strip()]
        m = re.match(r"\s*(\d+)\s*,", lines[0]) if lines else None
        if m is None:
            raise ModelFileError(f"{tracking}: expected lines 'epoch, EER%' (the LAP trainer's), best first")
        best = p / f"{m.group(1)}epoch" / "model.state"
        if not best.is_file():
            raise ModelFileError(f"{best}: missing; {tracking} names epoch {m.group(1)} as the best "
                                 f"(the LAP trainer keeps its best epochs' folders)")
        return best
    raise ModelFileError(f"--from {src}: a directory without model_best.pt, model.state or best_tracking.txt; "
                         "give the authors' checkpoint file")


def read_model_state(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(the model's state dict, what else the file says: epoch_no, ...). Loaded as data only."""
    obj = load_torch_data(path, "an authors' checkpoint (model_best.pt / model.state)",
                          "the authors' trainers save tensors, plain data and numpy's random state only; "
                          "if you trust the file, keep only its model_state and pass that",
                          extra_globals=_numpy_random_state_globals())
    if isinstance(obj, dict) and "model_state" in obj:  # UniPool-SV / L-TDNN
        state, info = obj["model_state"], {k: obj[k] for k in ("epoch_no",) if k in obj}
    else:  # LAP: the state dict itself
        state, info = obj, {}
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{path}: not a state dict (names -> tensors), nor a dict with one as 'model_state'")
    return dict(state), info


def _right_kind(state: Dict[str, torch.Tensor], kinds: Dict[str, AuthorsKind]) -> Optional[str]:
    return next((name for name, k in kinds.items() if k.marker in state), None)


# The upstream

def _hf_names(key: str) -> Tuple[str, ...]:
    """A transformers weight's names: weight-normed convolutions are weight_g / weight_v in older
    versions and parametrizations.weight.original0 / 1 in newer ones."""
    pairs = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))
    for old, new in pairs:
        if key.endswith(old):
            return key, key[: -len(old)] + new
        if key.endswith(new):
            return key, key[: -len(new)] + old
    return (key,)


def _fingerprint(t: torch.Tensor) -> Tuple:
    """Equal for equal tensors, whatever their names or shapes (providers split weights alike)."""
    t = t.detach().double().flatten()
    return (t.numel(), float(t.sum()), float(t[:16].sum()), float(t.abs().max())) if t.numel() else (0,)


def upstream_state_from(state: Dict[str, torch.Tensor], kind: AuthorsKind, upstream, name: str,
                        src: Path) -> Optional[Dict[str, torch.Tensor]]:
    """None when the file's upstream weights are --upstream's pretrained ones (a frozen upstream),
    else the fine-tuned upstream's state dict for our upstream (hf:<dir> only)."""
    theirs = {k[len(kind.upstream_prefix):]: v for k, v in state.items() if k.startswith(kind.upstream_prefix)}
    if not theirs:
        return None  # a file without the upstream: trained on frozen features
    ours = upstream.state_dict()
    if name.startswith("hf:"):  # the same transformers model: names map one to one
        mapped = {}
        for key, t in theirs.items():
            target = next((f"model.{n}" for n in _hf_names(key) if f"model.{n}" in ours), None)
            if target is None:
                raise ModelFileError(f"{src}: {kind.upstream_prefix}{key}: not a weight of --upstream {name}; "
                                     "give the transformers model the authors trained with")
            if tuple(t.shape) != tuple(ours[target].shape):
                raise ModelFileError(f"{src}: {kind.upstream_prefix}{key}: shape {tuple(t.shape)}, but --upstream {name} "
                                     f"has {tuple(ours[target].shape)}; give the transformers model the authors trained with")
            mapped[target] = t.to(ours[target].dtype)
        missing = [k for k in ours if k not in mapped]
        if missing:
            raise ModelFileError(f"{src}: no {kind.upstream_prefix}{missing[0][len('model.'):]} for --upstream {name}; "
                                 "give the transformers model the authors trained with")
        differs = [k for k, t in mapped.items() if not torch.equal(t, ours[k])]
        if not differs:
            return None
        logger.info("%s: the upstream was fine-tuned (%d of %d tensors differ from %s's, e.g. %s)", src, len(differs),
                    len(mapped), name, differs[0][len("model."):])
        return mapped
    # another provider names its weights otherwise: a frozen upstream still holds the same tensors
    have = {_fingerprint(t) for t in ours.values() if t.is_floating_point()}
    for key, t in theirs.items():
        if t.is_floating_point() and t.numel() > 1 and _fingerprint(t) not in have:
            raise ModelFileError(f"{src}: {kind.upstream_prefix}{key} is not among the pretrained weights of --upstream "
                                 f"{name} (a fine-tuned upstream, or another model): give --upstream hf:<dir> with "
                                 "the transformers model the authors started from, to store the fine-tuned one")
    return None


# The experiment dir

def check_out(out: str) -> Path:
    """--out: a new experiment dir (or an empty one); never an existing experiment or a file."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise OutputError(f"--out {out} is a file; give a new experiment dir (exp/<name>)")
    if o.is_dir() and any(o.iterdir()):
        raise OutputError(f"--out {out} exists and is not empty; an experiment is never overwritten: "
                          "give a new exp/<name> (or remove it first)")
    return o


def import_checkpoint(src: str, kind_name: str, upstream: str, upstream_ckpt: Optional[str], out: str) -> Path:
    """The authors' checkpoint -> out/ (model.pt, config.yaml, train_summary.json, imported.json)."""
    from upmp.losses import build_loss
    from upmp.train.schema import check_train_config
    from upmp.upstream import build_upstream

    kinds = _kinds()
    if kind_name not in kinds:
        raise ModelFileError(f"--kind {kind_name}: not a kind of the authors' checkpoints; choose from {', '.join(kinds)}")
    kind = kinds[kind_name]
    out_dir = check_out(out)
    path = find_checkpoint(src)
    state, info = read_model_state(path)
    if kind.marker not in state:
        other = _right_kind(state, kinds)
        hint = f"it looks like --kind {other}" if other else f"not a checkpoint of the authors' {kind_name} code"
        raise ModelFileError(f"{path}: {kind.marker}: missing; {hint}")
    network = {k[len(kind.prefix):]: v for k, v in state.items() if k.startswith(kind.prefix)}
    try:
        input_dim, num_layers, backend_conf = kind.layout(network, kind.prefix)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None

    up = build_upstream(upstream, upstream_ckpt)
    meta = LayerStackMeta(num_layers=int(up.num_layers), dim=int(up.dim), frame_shift=float(up.frame_shift),
                          upstream=upstream)
    seen = meta.num_layers if kind.use_hidden0 else meta.num_layers - 1
    if kind.first_layers and input_dim == meta.dim and num_layers < seen:
        raise ModelFileError(f"{path}: its {kind_name} network takes the first {num_layers} hidden states (trained with "
                             f"the authors' n_layer {num_layers - 1}); --upstream {upstream} gives {seen}, and upmp feeds "
                             "a backend all of them: only a model trained on every layer (n_layer 0) imports")
    if (input_dim, num_layers) != (meta.dim, seen):
        raise ModelFileError(f"{path}: its {kind_name} network takes {num_layers} hidden states of {input_dim} channels; "
                             f"--upstream {upstream} gives {seen} of {meta.dim}"
                             f"{'' if kind.use_hidden0 else ' (hidden state 0 dropped)'}; give the upstream it was trained on")
    aam_key = "aam_softmax.weight"
    if aam_key not in state:
        raise ModelFileError(f"{path}: {aam_key}: missing (the loss head's class weights)")
    loss_conf, head_state = kind.head(state[aam_key], f"{path}: {aam_key}")
    num_classes = int(state[aam_key].shape[-1])
    known = (kind.upstream_prefix, kind.prefix)
    extra = [k for k in state if not k.startswith(known) and k != aam_key and k not in kind.ignored]
    if extra:
        raise ModelFileError(f"{path}: {extra[0]}: a key this kind does not have; a checkpoint of another kind?")

    cfg = check_train_config({"backend": kind.backend, "use_hidden0": kind.use_hidden0, "backend_conf": backend_conf,
                              "loss": kind.loss, "loss_conf": loss_conf})
    model = build_model(cfg.backend, cfg.use_hidden0, dataclasses.asdict(cfg.backend_conf), meta)
    try:
        model.backend.load_state_dict(kind.state(model.backend, network, kind.prefix))
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    head = build_loss(kind.loss, model.embed_dim, num_classes, cfg.loss_conf)
    head.load_state_dict(head_state)
    finetuned = upstream_state_from(state, kind, up, upstream, path)

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    imported = {"from": str(path), "sha256": file_sha256(path), "kind": kind_name, **info}
    inputs = {"upstream": upstream, **({"upstream_ckpt": upstream_ckpt} if upstream_ckpt else {})}
    content = {"config": cfg.to_dict(), "layer_stack": vars(meta), "model": weights(model),
               "head": weights(head), "speakers": None, "num_params": n_params, "train_seconds": None,
               "step": info.get("epoch_no"), "world_size": 1, "inputs": inputs, "imported": imported}
    if finetuned is not None:
        content["upstream"] = {"name": upstream, "ckpt": upstream_ckpt, "state": finetuned}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        save_model(tmp / "model.pt", content)
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary = {"num_params": n_params, "train_seconds": None, "step": info.get("epoch_no"), "world_size": 1,
                   "inputs": inputs, "valid_eer": None, "num_speakers": num_classes}
        atomic_write_text(tmp / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(tmp / "imported.json", json.dumps(
            dict(imported, upstream=upstream, finetuned_upstream=finetuned is not None), indent=2) + "\n")
        with output_lock(out_dir, out_dir.parent / f".{out_dir.name}.lock"):  # one importer per --out
            check_out(out)  # again: nothing was written there meanwhile
            os.rename(tmp, out_dir)  # onto a missing or empty dir: the experiment appears complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


