"""Large-margin fine-tuning (LMFT): the last training phase of WeSpeaker's VoxCeleb recipes and of the
LAP follow-up. Training continues from a selected model.pt with longer crops, a larger AAM margin
and a short, low learning-rate cycle (few steps).

The phase's values are the config's `lmft_conf` (upmp/train/schema.py: LMFTConf; defaults 2000
steps, 6 s crops, lr 1e-4, margin 0.5). `lmft_config(cfg)` places them over the training keys;
`init_from_model` loads the backend and loss-head weights of the base model before step 0
(and its trained upstream or upstream adapter).

The phase runs at its fixed lmft_conf.margin: the base config's loss_conf.margin_schedule (a ramp
for training from scratch) is not applied (shape none in the phase's config), nor is its
train_conf.init (the phase starts from the base model).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

import upmp.checkpoint as checkpoint
from upmp.errors import ConfigError, ModelFileError
from upmp.train.schema import MarginScheduleConf, TrainConfig, check_train_config

logger = logging.getLogger(__name__)


def lmft_config(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """The config of the LMFT phase: cfg with its lmft_conf values in place of train_conf.steps /
    crop_seconds / valid_every, optim_conf.lr and loss_conf.margin, checked again."""
    lm = cfg.lmft_conf
    phase = replace(cfg, train_conf=replace(cfg.train_conf, steps=lm.steps, crop_seconds=lm.crop_seconds,
                                            valid_every=lm.valid_every, init=""),
                    optim_conf=replace(cfg.optim_conf, lr=lm.lr),
                    # the phase's margin is fixed (module doc)
                    loss_conf=replace(cfg.loss_conf, margin=lm.margin, margin_schedule=MarginScheduleConf()))
    try:
        return check_train_config(phase.to_dict())
    except ConfigError as e:
        raise ConfigError(f"{source} (lmft_conf): {e}") from None


def init_from_model(model: nn.Module, head: nn.Module, path: str, speakers: List[str],
                    upstream: Optional[nn.Module] = None) -> None:
    """Backend and loss-head weights from a base model.pt (its checkpoints/last.pt supplies the head
    of a model.pt written without one), and the upstream's when the base trained it (fine-tuned, or
    its LoRA adapter): `upstream` is this run's trained upstream (None when frozen or cached). The
    training speakers must be the base model's."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{path}: base model for large-margin fine-tuning not found; train it first (stage 2)")
    state = checkpoint.read_model(p)
    if state.get("speakers") is not None and list(state["speakers"]) != list(speakers):
        raise ModelFileError(f"{path}: trained on other speakers ({len(state['speakers'])}) than this training "
                             f"set's ({len(speakers)}); fine-tune on the base model's training set")
    head_state = state.get("head")
    if head_state is None:
        last = p.parent / "checkpoints" / "last.pt"
        if not last.is_file():
            raise ModelFileError(f"{path}: has no loss head and {last} is missing; retrain the base model")
        head_state = checkpoint.read_train_state(last)["head"]
        logger.warning("%s has no loss head: using the last checkpoint's (%s)", path, last)
    try:
        model.load_state_dict(state["model"])
        head.load_state_dict(head_state)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit this config's backend / loss head "
                             f"({str(e).splitlines()[0]}); use the base model's config") from None
    if state.get("upstream") is not None:
        _init_upstream(upstream, state["upstream"], path)
    logger.info("large-margin fine-tuning from %s (step %s)", path, state.get("step", "?"))


def _init_upstream(upstream: Optional[nn.Module], trained: Dict[str, Any], path: str) -> None:
    """The base model's trained upstream weights (all of them, or its adapter's) into this run's
    upstream, which must be trained the same way: else the phase would start from other features."""
    how = "a LoRA adapter (train_conf.upstream_adapter)" if trained.get("adapter") else \
        "fine-tuning (train_conf.finetune_upstream)"
    mine = getattr(upstream, "adapter", None) if upstream is not None else None
    if upstream is None or (trained.get("adapter") is None) != (mine is None) or \
            (mine is not None and dict(mine) != dict(trained["adapter"])):
        raise ModelFileError(f"{path}: its upstream {trained['name']} was trained by {how}; large-margin "
                             "fine-tuning must train it the same way (online, with the base model's config)")
    checkpoint.load_upstream_weights(upstream, trained["state"], path)
