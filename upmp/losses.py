"""Classification losses on speaker embeddings (the head is dropped after training)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace), espnet2.spk's implementation.

    forward(embeddings (B, E), labels (B,)) -> (loss, accuracy)
    """

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        from espnet2.spk.loss.aamsoftmax import AAMSoftmax as EspnetAAMSoftmax
        self.head = EspnetAAMSoftmax(nout=embed_dim, nclasses=num_classes, margin=margin, scale=scale)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        loss, accuracy, _ = self.head(embeddings, labels)
        return loss, accuracy


LOSSES = {"aamsoftmax": AAMSoftmax}


def build_loss(name: str, embed_dim: int, num_classes: int, conf: dict) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name](embed_dim, num_classes, **conf)
