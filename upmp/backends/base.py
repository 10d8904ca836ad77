"""The backend interface: what training, extraction and the layer-usage plot ask of a backend."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Dict, Optional

import torch
from torch import nn


class Backend(nn.Module, metaclass=ABCMeta):
    """Layer stack (B, D, L, T) + frame mask (B, T) -> speaker embedding (B, embed_dim).

    Constructor: (input_dim D, num_layers L, **backend_conf). A subclass sets
        embed_dim            the embedding size E (an instance attribute, from its config)
        padding_invariant    class attribute: True when a padded batch gives the same embeddings
                             as one utterance at a time (extraction then batches utterances)
        min_frames           the fewest frames T it embeds (convolutions without enough padding)
    and implements forward() and layer_usage().
    """

    embed_dim: int
    padding_invariant: bool = False
    min_frames: int = 1

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, D, L, T), mask (B, T) bool or None (all frames valid) -> (B, E)."""

    @abstractmethod
    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Which of the L hidden states the backend relies on, for the plot (upmp.analysis):
        title -> (rows, L) non-negative values (e.g. one row of layer weights, or a row per head),
        from one batch x (B, D, L, T) with mask (B, T); called in eval mode without gradients."""
