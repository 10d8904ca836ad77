"""One chosen layer + x-vector TDNN: the SUPERB ASV downstream.

(B, D, L, T) + mask -> (B, E): hidden state `layer` (default -1, the last), the
espnet2.spk x-vector TDNN (5 frame-level layers), statistics pooling over valid
frames, then the segment-level affine layer whose output is the x-vector.
The TDNN's context reaches into padding, so embed one utterance at a time.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from upmp.backends.base import Backend
from upmp.errors import ConfigError


class XvectorBackend(Backend):
    padding_invariant = False

    def __init__(self, input_dim: int, num_layers: int, layer: int = -1, ndim: int = 512,
                 output_size: int = 1500, embed_dim: int = 512):
        super().__init__()
        from espnet2.spk.encoder.xvector_encoder import XvectorEncoder
        from espnet2.spk.pooling.stat_pooling import StatsPooling
        if not -num_layers <= layer < num_layers:
            raise ConfigError(f"layer {layer} out of range for {num_layers} hidden states")
        self.layer = layer
        self.encoder = XvectorEncoder(input_dim, ndim=ndim, output_size=output_size)
        self.pooling = StatsPooling()
        self.segment = nn.Linear(2 * output_size, embed_dim)
        self.embed_dim = embed_dim
        self.min_frames = 1  # the input frames its TDNN needs for one output frame (7 for espnet's)
        for conv in reversed([m for m in self.encoder.modules() if isinstance(m, nn.Conv1d)]):
            (k,), (d,), (p,), (s,) = conv.kernel_size, conv.dilation, conv.padding, conv.stride
            self.min_frames = max(1, (self.min_frames - 1) * s + d * (k - 1) + 1 - 2 * p)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        frames = self.encoder(x[:, :, self.layer].transpose(1, 2))  # (B, C, T - min_frames + 1)
        # the TDNN's unpadded context shortens every utterance by the same number of frames: pool
        # over that many fewer (as training does without a mask), not over the input frames
        lengths = None if mask is None else (mask.sum(dim=1) - (x.shape[-1] - frames.shape[-1])).clamp(min=1)
        return self.segment(self.pooling(frames, lengths))

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The one hidden state used, as a one-hot row."""
        onehot = torch.zeros(1, x.shape[2])
        onehot[0, self.layer] = 1.0
        return {"layer used": onehot}
