"""LAP + ASTP: layer attentive pooling straight on the hidden states (the 2025 follow-up).

(B, D, L, T) + mask -> (B, E): BN2d and a 1x1 conv D -> D (with bias) over every
hidden state (hidden state 0 included through `use_hidden0: true` in the config),
per-head channel mean/max with a per-head MLP over the layer axis
(squeeze-excitation of layers), max over layers, Conv1d D -> 512 (with bias) + BN,
then attentive statistics pooling to E. The biases are as in the follow-up's code,
so the parameter counts equal its backend's (docs/method.md).
The layer pooling is the module UPMP uses (upmp.backends.pooling.LayerAttentivePooling)
with 16 heads.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from upmp.backends.base import Backend
from upmp.backends.pooling import AttentiveStatisticsPooling, LayerAttentivePooling, full_mask_if_none


class LAPBackend(Backend):
    padding_invariant = True

    def __init__(self, input_dim: int, num_layers: int, heads: int = 16, channels: int = 512,
                 embed_dim: int = 192, dropout: float = 0.1):
        super().__init__()
        self.layer_pooling = LayerAttentivePooling(input_dim, input_dim, num_layers, heads, dropout,
                                                   out_channels=channels, bias=True)
        self.frame_pooling = AttentiveStatisticsPooling(channels, embed_dim, dropout)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = full_mask_if_none(x, mask)
        return self.frame_pooling(self.layer_pooling(x, mask), mask)

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"layer attention score (row: head)": self.layer_pooling.mean_scores(x, mask)}
