"""Backends: layer stack (B, D, L, T) + mask (B, T) -> speaker embedding (B, E).

One registry maps the config name to the class (each a `upmp.backends.base.Backend`: embed_dim,
padding_invariant, forward, layer_usage); `upmp.checkpoint.build_model` chains sizes
(upstream D and L -> backend -> embedding -> loss head). A new backend: one file with a Backend
subclass and an entry here; its constructor's keyword arguments are its backend_conf keys and
defaults (upmp/train/schema.py adds their types and ranges: BACKEND_CONFS).
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import torch
from torch import nn

from upmp.backends.base import Backend
from upmp.backends.lap import LAPBackend
from upmp.backends.ltdnn import LTDNND3NetBackend, LTDNNEcapaBackend
from upmp.backends.mhfa import MHFABackend
from upmp.backends.superb_ecapa import SuperbEcapaBackend
from upmp.backends.upmp import UPMPBackend
from upmp.backends.xvector import XvectorBackend
from upmp.errors import ConfigError

BACKENDS: Dict[str, Type[Backend]] = {
    "upmp": UPMPBackend,
    "ltdnn_d3net": LTDNND3NetBackend,
    "ltdnn_ecapa": LTDNNEcapaBackend,
    "lap": LAPBackend,
    "mhfa": MHFABackend,
    "superb_ecapa": SuperbEcapaBackend,
    "xvector": XvectorBackend,
}


class SpeakerEmbeddingModel(nn.Module):
    """Selects the hidden states a backend sees, then runs it.

    forward(stack (B, D, L_all, T), mask (B, T)) -> (B, E), where L_all counts
    hidden state 0 (the CNN output) and use_hidden0=False drops it. A stack of a layer subset
    without hidden state 0 (has_hidden0=False) is passed whole.
    """

    def __init__(self, backend: str, input_dim: int, num_layers: int, use_hidden0: bool = False,
                 backend_conf: Optional[dict] = None, has_hidden0: bool = True):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(sorted(BACKENDS))}")
        if not issubclass(BACKENDS[backend], Backend):
            raise TypeError(f"backend {backend!r}: {BACKENDS[backend].__name__} must derive from "
                            "upmp.backends.base.Backend")
        self.use_hidden0 = use_hidden0 or not has_hidden0  # nothing to drop
        used_layers = num_layers if self.use_hidden0 else num_layers - 1
        if used_layers < 1:
            raise ConfigError(f"upstream has {num_layers} hidden states; none left for the backend")
        self.backend: Backend = BACKENDS[backend](input_dim=input_dim, num_layers=used_layers,
                                                  **(backend_conf or {}))
        self.embed_dim = self.backend.embed_dim
        # whether padded batches give the same embeddings as single utterances
        self.padding_invariant = self.backend.padding_invariant
        self.min_frames = self.backend.min_frames

    def _select(self, stack: torch.Tensor) -> torch.Tensor:
        return stack if self.use_hidden0 else stack[:, :, 1:]

    def forward(self, stack: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.backend(self._select(stack), mask)

    def layer_usage(self, stack: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The backend's layer_usage on the hidden states it sees (see Backend.layer_usage)."""
        if mask is None:
            mask = torch.ones(stack.shape[0], stack.shape[-1], dtype=torch.bool, device=stack.device)
        return self.backend.layer_usage(self._select(stack), mask)
