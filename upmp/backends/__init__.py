"""Backends: layer stack (B, D, L, T) + mask (B, T) -> speaker embedding (B, E).

One registry maps the config name to the class; `build_model` chains sizes
(upstream D and L -> backend -> embedding -> loss head).
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import torch
from torch import nn

from upmp.backends.lap import LAPBackend
from upmp.backends.mhfa import MHFABackend
from upmp.backends.superb_ecapa import SuperbEcapaBackend
from upmp.backends.upmp import UPMPBackend
from upmp.backends.xvector import XvectorBackend

BACKENDS: Dict[str, Type[nn.Module]] = {
    "upmp": UPMPBackend,
    "lap": LAPBackend,
    "mhfa": MHFABackend,
    "superb_ecapa": SuperbEcapaBackend,
    "xvector": XvectorBackend,
}


class SpeakerEmbeddingModel(nn.Module):
    """Selects the hidden states a backend sees, then runs it.

    forward(stack (B, D, L_all, T), mask (B, T)) -> (B, E), where L_all counts
    hidden state 0 (the CNN output) and use_hidden0=False drops it.
    """

    def __init__(self, backend: str, input_dim: int, num_layers: int, use_hidden0: bool = False,
                 backend_conf: Optional[dict] = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(sorted(BACKENDS))}")
        self.use_hidden0 = use_hidden0
        used_layers = num_layers if use_hidden0 else num_layers - 1
        if used_layers < 1:
            raise ValueError(f"upstream has {num_layers} hidden states; none left for the backend")
        self.backend = BACKENDS[backend](input_dim=input_dim, num_layers=used_layers,
                                         **(backend_conf or {}))
        self.embed_dim = self.backend.embed_dim
        # whether padded batches give the same embeddings as single utterances
        self.padding_invariant = getattr(self.backend, "padding_invariant", False)

    def forward(self, stack: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.use_hidden0:
            stack = stack[:, :, 1:]
        return self.backend(stack, mask)
