"""MHFA: multi-head factorised attentive pooling (Peng et al., SLT 2022; WeSpeaker / BUT SSL recipe).

(B, D, L, T) + mask (B, T) -> (B, E):
1. two softmax weightings over the L hidden states (zero logits: uniform start), one for the
   keys and one for the values: K, V (B, T, D);
2. both compressed D -> c by their own linear layers: K', V' (B, T, c);
3. a linear map c -> H of K' gives H attention logits per frame; a softmax over the valid
   frames of each head (padded frames get -inf) weights V': H pooled vectors (B, H, c);
4. the H x c head outputs, flattened, through a linear layer to the embedding E.
The frame softmax is the only place where frames meet, so padding is neutral exactly.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from upmp.backends.base import Backend
from upmp.backends.pooling import full_mask_if_none


class MHFABackend(Backend):
    padding_invariant = True
    LAYER_USAGE_TITLE = "MHFA layer weights (row 0: keys, row 1: values)"

    def __init__(self, input_dim: int, num_layers: int, compression_dim: int = 128, heads: int = 64,
                 embed_dim: int = 256):
        super().__init__()
        self.key_logits = nn.Parameter(torch.zeros(num_layers))
        self.value_logits = nn.Parameter(torch.zeros(num_layers))
        self.compress_keys = nn.Linear(input_dim, compression_dim)
        self.compress_values = nn.Linear(input_dim, compression_dim)
        self.attention = nn.Linear(compression_dim, heads)
        self.output = nn.Linear(heads * compression_dim, embed_dim)
        self.embed_dim = embed_dim

    def layer_weights(self) -> torch.Tensor:
        """(2, L): the softmax layer weights of the keys (row 0) and the values (row 1)."""
        return torch.stack([torch.softmax(self.key_logits, 0), torch.softmax(self.value_logits, 0)])

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.LAYER_USAGE_TITLE: self.layer_weights()}

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = full_mask_if_none(x, mask)
        w_key, w_value = self.layer_weights()
        keys = self.compress_keys(torch.einsum("bdlt,l->btd", x, w_key))  # (B, T, c)
        values = self.compress_values(torch.einsum("bdlt,l->btd", x, w_value))  # (B, T, c)
        logits = self.attention(keys).masked_fill(~mask.unsqueeze(2), float("-inf"))  # (B, T, H)
        weights = torch.softmax(logits, dim=1)
        heads = torch.einsum("bth,btc->bhc", weights, values)  # (B, H, c)
        return self.output(heads.flatten(1))
