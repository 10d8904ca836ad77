"""LAP + ASTP: layer attentive pooling straight on the hidden states (the 2025 follow-up).

(B, D, L, T) + mask -> (B, E): BN2d and a 1x1 conv D -> D (with bias) over every
hidden state (hidden state 0 included through `use_hidden0: true` in the config),
per-head channel mean/max with a per-head MLP over the layer axis
(squeeze-excitation of layers), max over layers, Conv1d D -> 512 (with bias) + BN,
then attentive statistics pooling to E. The biases are as in the follow-up's code,
so the parameter counts equal its backend's (docs/method.md).
The layer pooling is the module UPMP uses (upmp.backends.pooling.LayerAttentivePooling)
with 16 heads.

variant "masked" (the default): our statistics pooling (population std in the context, element
dropout on the attention weights) and initialisation (per-head xavier MLP weights, PyTorch's
defaults elsewhere). variant "authors": as the LAP code (src/model.py, astp.py) embeds and
initialises: unbiased, unclamped context std, whole frames dropped from the attention softmax, and every
weight of two or more dimensions xavier-uniform over the whole tensor with zero biases; what the
LAP recipes and imported LAP models use. Both are masked (padding leaves embeddings unchanged).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from upmp.backends.authors import map_authors_state, renamer
from upmp.backends.base import Backend
from upmp.backends.pooling import AttentiveStatisticsPooling, LayerAttentivePooling, full_mask_if_none
from upmp.errors import ConfigError, ModelFileError

VARIANTS = ("masked", "authors")


class LAPBackend(Backend):
    padding_invariant = True

    def __init__(self, input_dim: int, num_layers: int, heads: int = 16, channels: int = 512,
                 embed_dim: int = 192, dropout: float = 0.1, variant: str = "masked"):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"backend_conf.variant: {variant!r}; choose from {', '.join(VARIANTS)}")
        authors = variant == "authors"
        self.layer_pooling = LayerAttentivePooling(input_dim, input_dim, num_layers, heads, dropout,
                                                   out_channels=channels, bias=True)
        self.frame_pooling = AttentiveStatisticsPooling(channels, embed_dim, dropout, frame_dropout=authors,
                                                        context_std="unbiased" if authors else "population")
        self.embed_dim = embed_dim
        if authors:
            self._authors_init()

    def _authors_init(self) -> None:
        """The LAP code's init_weights: xavier-uniform on every weight of two or more dimensions
        (the whole tensor: a (heads, L, L/2) MLP weight gets fans L*L/2 and heads*L/2), zero biases;
        batch-norm weights stay 1."""
        for name, p in self.named_parameters():
            if name.endswith("bias") or name.rsplit(".", 1)[-1] in ("b1", "b2"):
                nn.init.zeros_(p)
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = full_mask_if_none(x, mask)
        return self.frame_pooling(self.layer_pooling(x, mask), mask)

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"layer attention score (row: head)": self.layer_pooling.mean_scores(x, mask)}

    # The LAP code's backend (LAP src/model.py: backend.layer_aggregation (LAP) and
    # backend.speaker_network (ASTP) of model.state, "backend." stripped) -> this backend.

    _AUTHORS_RULES = (
        (r"layer_pooling\.norm\.(.*)", r"layer_aggregation.in_norm.\1"),
        (r"layer_pooling\.proj\.(.*)", r"layer_aggregation.in_weight.\1"),
        (r"layer_pooling\.w1", "layer_aggregation.sq_weight"),
        (r"layer_pooling\.b1", "layer_aggregation.sq_bias"),
        (r"layer_pooling\.w2", "layer_aggregation.ex_weight"),
        (r"layer_pooling\.b2", "layer_aggregation.ex_bias"),
        (r"layer_pooling\.out\.0\.(.*)", r"layer_aggregation.out_weight.\1"),
        (r"layer_pooling\.out\.1\.(.*)", r"layer_aggregation.out_norm.\1"),
        (r"frame_pooling\.attention\.(.*)", r"speaker_network.t_pool.attention.\1"),
        (r"frame_pooling\.bn_stats\.(.*)", r"speaker_network.t_pool.norm.\1"),
        (r"frame_pooling\.linear\.(.*)", r"speaker_network.emb_weight.\1"),
        (r"frame_pooling\.bn_embed\.(.*)", r"speaker_network.emb_norm.\1"),
    )

    @classmethod
    def authors_layout(cls, backend: Dict[str, torch.Tensor], prefix: str = "backend.") -> Tuple[int, int, Dict[str, Any]]:
        """(input_dim D, num_layers L (hidden state 0 included), backend_conf) of the LAP code's
        LAP + ASTP backend, from its shapes; the authors' variant of the pooling."""
        for key in ("layer_aggregation.in_norm.weight", "layer_aggregation.sq_weight",
                    "layer_aggregation.out_weight.weight", "speaker_network.emb_weight.weight"):
            if key not in backend:
                raise ModelFileError(f"{prefix}{key}: missing from the checkpoint; not the LAP code's LAP + ASTP backend")
        heads, num_layers = backend["layer_aggregation.sq_weight"].shape[:2]
        conf = dict(heads=int(heads), channels=int(backend["layer_aggregation.out_weight.weight"].shape[0]),
                    embed_dim=int(backend["speaker_network.emb_weight.weight"].shape[0]), dropout=0.1, variant="authors")
        return int(backend["layer_aggregation.in_norm.weight"].shape[0]), int(num_layers), conf

    def state_from_authors(self, backend: Dict[str, torch.Tensor], prefix: str = "backend.") -> Dict[str, torch.Tensor]:
        """Our state dict holding the LAP code's backend weights."""
        return map_authors_state(self.state_dict(), backend, renamer(self._AUTHORS_RULES), prefix)
