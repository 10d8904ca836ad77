"""Classification losses on speaker embeddings (the head is dropped after training).

Both losses come from espnet2.spk; `heads` splits the embedding into equal parts,
each with its own class weights (the paper's multi-head AAM-softmax; heads = 1 is
the usual single head). The loss is the mean of the heads' losses; the accuracy
is that of the heads' summed cosine logits.

The margin may follow a schedule over the training steps (loss_conf.margin_schedule;
`scheduled_margin`, applied by the trainer with `set_margin` before each step).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import torch
from torch import nn

from upmp.errors import ConfigError


class _MultiHead(nn.Module):
    def __init__(self, make_head, embed_dim: int, heads: int):
        super().__init__()
        if heads < 1 or embed_dim % heads:
            raise ConfigError(f"embedding size {embed_dim} must split into {heads} equal heads")
        self.heads = nn.ModuleList(make_head(embed_dim // heads) for _ in range(heads))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        parts = embeddings.chunk(len(self.heads), dim=1)
        losses, logits = [], 0
        for head, part in zip(self.heads, parts):
            loss, _, _ = head(part, labels)
            losses.append(loss)
            logits = logits + self._cosine(head, part)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return torch.stack(losses).mean(), accuracy

    def set_margin(self, margin: float) -> None:
        """Every head's additive angular margin (and the constants derived from it) set to margin."""
        # the constants espnet's heads derive from the margin; the sub-centre head's update() also
        # scales its hard-negative penalty with the margin (WeSpeaker's scheduler calls it every step)
        for head in self.heads:
            if hasattr(head, "update"):
                head.update(margin)
                continue
            head.m = margin
            if hasattr(head, "margin"):
                head.margin = margin
            head.cos_m, head.sin_m = math.cos(margin), math.sin(margin)
            head.th = math.cos(math.pi - margin)
            head.mm = math.sin(math.pi - margin) * margin
            if hasattr(head, "mmm"):
                head.mmm = 1.0 + math.cos(math.pi - margin)

    @staticmethod
    def _cosine(head, part: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine to each class (the closest sub-centre when there are several)."""
        cos = nn.functional.linear(nn.functional.normalize(part), nn.functional.normalize(head.weight))
        classes = getattr(head, "out_features", cos.shape[1])
        return cos.view(cos.shape[0], classes, -1).amax(dim=2)


class AAMSoftmax(_MultiHead):
    """Additive angular margin softmax (ArcFace), espnet2.spk's implementation.

    forward(embeddings (B, E), labels (B,)) -> (loss, accuracy)
    """

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0,
                 heads: int = 1):
        from espnet2.spk.loss.aamsoftmax import AAMSoftmax as EspnetAAMSoftmax
        super().__init__(lambda d: EspnetAAMSoftmax(nout=d, nclasses=num_classes, margin=margin, scale=scale),
                         embed_dim, heads)


class SubcenterInterTopkAAMSoftmax(_MultiHead):
    """AAM-softmax with K sub-centres per class and an extra margin on the top-k hardest
    negative classes (espnet2.spk / WeSpeaker's ArcMarginProduct_intertopk_subcenter)."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0,
                 heads: int = 1, subcenters: int = 3, topk: int = 5, topk_margin: float = 0.06):
        from espnet2.spk.loss.aamsoftmax_subcenter_intertopk import ArcMarginProduct_intertopk_subcenter
        super().__init__(lambda d: ArcMarginProduct_intertopk_subcenter(
            nout=d, nclasses=num_classes, scale=scale, margin=margin, K=subcenters, mp=topk_margin,
            k_top=min(topk, num_classes - 1)), embed_dim, heads)
        # espnet's head starts with its hard-negative penalty off (cos_mp = 1) and turns it on only in
        # update(); without this call loss_conf.topk_margin never acted
        self.set_margin(margin)


LOSSES = {"aamsoftmax": AAMSoftmax, "aamsoftmax_subcenter_topk": SubcenterInterTopkAAMSoftmax}


# the ramps of loss_conf.margin_schedule: progress p in [0, 1] -> fraction of the way to the final margin
_RAMPS = {
    "linear": lambda p: p,
    # fast first, then levelling off (WeSpeaker's "exp" increase): 1 - 0.001^p, rescaled to end at 1
    "exp": lambda p: (1.0 - 1e-3 ** p) / (1.0 - 1e-3),
    # slow, fast, slow (the LAP code's "cos"): half a cosine period
    "cos": lambda p: 0.5 * (1.0 - math.cos(math.pi * p)),
}


def scheduled_margin(schedule, final: float, step: int) -> float:
    """The AAM margin at training step `step` (0-based): loss_conf.margin_schedule's (`schedule`:
    shape, start_step, end_step, start_margin) start_margin up to start_step, its ramp of the given
    shape, then loss_conf.margin (`final`) from end_step on. A function of the step only, so a resumed
    run repeats the margins exactly."""
    if schedule.shape == "none" or step >= schedule.end_step:
        return final
    if step <= schedule.start_step:
        return schedule.start_margin
    p = (step - schedule.start_step) / (schedule.end_step - schedule.start_step)
    return schedule.start_margin + (final - schedule.start_margin) * _RAMPS[schedule.shape](p)


def build_loss(name: str, embed_dim: int, num_classes: int, conf) -> nn.Module:
    """The loss head of loss_conf `conf` (the typed config's, upmp.train.schema.LOSS_CONFS[name]): its
    fields are the head's keyword arguments, but margin_schedule, which is the trainer's (the head
    starts at its step-0 margin)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    kwargs = {f.name: getattr(conf, f.name) for f in dataclasses.fields(conf) if f.name != "margin_schedule"}
    head = LOSSES[name](embed_dim, num_classes, **kwargs)
    if conf.margin_schedule.shape != "none":
        head.set_margin(scheduled_margin(conf.margin_schedule, conf.margin, 0))
    return head
