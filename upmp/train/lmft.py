"""Large-margin fine-tuning (LMFT): the last training phase of WeSpeaker's VoxCeleb recipes and of the
LAP follow-up. Training continues from a selected model.pt with longer crops, a larger AAM margin
and a short, low learning-rate cycle (few steps).

The phase's settings live in the config's `lmft_conf` section, shaped like the config itself:

    lmft_conf:
      train_conf: {steps: 2000, crop_seconds: 6.0}
      optim_conf: {lr: 1.0e-4}
      loss_conf: {margin: 0.5}

`lmft_config(cfg)` places them over the training keys (a key the config does not have is an error);
`init_from_model` loads the backend and loss-head weights of the base model before step 0.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from upmp.config import apply_overrides
from upmp.errors import ConfigError, ModelFileError

logger = logging.getLogger(__name__)


def _flatten(node: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def lmft_config(cfg: Dict[str, Any], source: str = "config") -> Dict[str, Any]:
    """The config of the LMFT phase: cfg with its lmft_conf values in place (lmft_conf itself kept)."""
    phase = cfg.get("lmft_conf")
    if not isinstance(phase, dict) or not phase:
        raise ConfigError(f"{source}: large-margin fine-tuning needs an lmft_conf section "
                          "(e.g. lmft_conf: {train_conf: {steps: 2000, crop_seconds: 6.0}, "
                          "optim_conf: {lr: 1.0e-4}, loss_conf: {margin: 0.5}})")
    if "lmft_conf" in phase:
        raise ConfigError(f"{source}: lmft_conf cannot set lmft_conf")
    return apply_overrides(cfg, _flatten(phase), source=f"{source} (lmft_conf must name existing keys)")


def init_from_model(model: nn.Module, head: nn.Module, path: str, speakers: List[str]) -> None:
    """Backend and loss-head weights from a base model.pt (its checkpoints/last.pt supplies the head
    of a model.pt written without one). The training speakers must be the base model's."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{path}: base model for large-margin fine-tuning not found; train it first (stage 2)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ModelFileError(f"{path}: not a model.pt written by upmp.bin.train")
    if state.get("speakers") is not None and list(state["speakers"]) != list(speakers):
        raise ModelFileError(f"{path}: trained on other speakers ({len(state['speakers'])}) than this training "
                             f"set's ({len(speakers)}); fine-tune on the base model's training set")
    head_state = state.get("head")
    if head_state is None:
        last = p.parent / "checkpoints" / "last.pt"
        if not last.is_file():
            raise ModelFileError(f"{path}: has no loss head and {last} is missing; retrain the base model")
        head_state = torch.load(last, map_location="cpu", weights_only=True)["head"]
        logger.warning("%s has no loss head: using the last checkpoint's (%s)", path, last)
    try:
        model.load_state_dict(state["model"])
        head.load_state_dict(head_state)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: weights do not fit this config's backend / loss head "
                             f"({str(e).splitlines()[0]}); use the base model's config") from None
    logger.info("large-margin fine-tuning from %s (step %s)", path, state.get("step", "?"))
