"""Classification losses on speaker embeddings (the head is dropped after training).

Both losses come from espnet2.spk; `heads` splits the embedding into equal parts,
each with its own class weights (the paper's multi-head AAM-softmax; heads = 1 is
the usual single head). The loss is the mean of the heads' losses; the accuracy
is that of the heads' summed cosine logits.
"""
from __future__ import annotations

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


LOSSES = {"aamsoftmax": AAMSoftmax, "aamsoftmax_subcenter_topk": SubcenterInterTopkAAMSoftmax}


def build_loss(name: str, embed_dim: int, num_classes: int, conf: dict) -> nn.Module:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name](embed_dim, num_classes, **conf)
