"""SUPERB weighted sum of layers + ECAPA-TDNN: the WavLM / ESPnet-SPK / S3PRL backend.

(B, D, L, T) + mask -> (B, E): softmax-weighted sum over the L hidden states
(uniform initial weights), then espnet2.spk's ECAPA-TDNN encoder and
channel-attentive statistics pooling (with frame lengths), then BN -> Linear -> BN
to the embedding. ECAPA's squeeze-excitation averages over all frames, padding
included, so batched inference is not padding-neutral: embed one utterance at a time.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from upmp.backends.base import Backend


class SuperbEcapaBackend(Backend):
    padding_invariant = False

    def __init__(self, input_dim: int, num_layers: int, ndim: int = 1024, model_scale: int = 8,
                 output_size: int = 1536, embed_dim: int = 192):
        super().__init__()
        from espnet2.spk.encoder.ecapa_tdnn_encoder import EcapaTdnnEncoder
        from espnet2.spk.pooling.chn_attn_stat_pooling import ChnAttnStatPooling
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))  # SUPERB: softmax weights, uniform start
        self.encoder = EcapaTdnnEncoder(input_dim, ndim=ndim, model_scale=model_scale, output_size=output_size)
        self.pooling = ChnAttnStatPooling(output_size)
        self.projector = nn.Sequential(nn.BatchNorm1d(2 * output_size), nn.Linear(2 * output_size, embed_dim),
                                       nn.BatchNorm1d(embed_dim))
        self.embed_dim = embed_dim

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, D, L, T = x.shape
        # the weighted sum as one product over the layer axis of x viewed (B*D, L, T):
        # no permuted copy of the stack, forward or backward
        feats = torch.matmul(self.layer_weights(), x.reshape(B * D, L, T)).view(B, D, T)
        frames = self.encoder(feats.transpose(1, 2))  # (B, T, D) in, (B, C, T) out
        lengths = None if mask is None else mask.sum(dim=1)
        return self.projector(self.pooling(frames, lengths))

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"SUPERB layer weights": self.layer_weights()[None]}
