"""The base of every upstream: frozen by default, trainable on request (joint fine-tuning).

A subclass implements `extract(wavs (B, N), wav_lens (B,)) -> (stack (B, D, L, T), lengths (B,))`
and sets num_layers, dim and frame_shift. `keep_layers(layers)` makes forward return only those
hidden states (a model trained on a subset, online). Frozen (the default), the module stays in eval
mode whatever train() is called with, its parameters need no gradients and forward runs
under no_grad. `set_trainable(True)` unfreezes it: gradients flow, and train() switches
dropout etc. on as for any module.
"""
from __future__ import annotations

import abc
from typing import List, Optional, Tuple

import torch
from torch import nn


class Upstream(nn.Module, metaclass=abc.ABCMeta):
    num_layers: int
    dim: int
    frame_shift: float
    trainable: bool = False
    kept_layers: Optional[List[int]] = None   # the hidden states forward returns (None: all)

    def keep_layers(self, layers: Optional[List[int]]) -> "Upstream":
        """forward returns only these hidden states (ascending indices of the full stack, checked
        by upmp.data.layer_stacks.parse_layers); num_layers then counts them. None: all."""
        if layers is not None:
            if self.kept_layers is not None:
                raise ValueError(f"the upstream keeps hidden states {self.kept_layers} already")
            self.kept_layers, self.num_layers = list(layers), len(layers)
        return self

    def set_trainable(self, trainable: bool) -> "Upstream":
        self.trainable = trainable
        for p in self.parameters():
            p.requires_grad_(trainable)
        return self.train(self.training)

    def freeze(self) -> "Upstream":
        return self.set_trainable(False).eval()

    def train(self, mode: bool = True):
        super().train(mode and self.trainable)
        return self

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            stack, lengths = self.extract(wavs, wav_lens)
            return (stack if self.kept_layers is None else stack[:, :, self.kept_layers]), lengths

    @abc.abstractmethod
    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The provider's forward pass: (B, N) waveforms -> (stack (B, D, L, T), frame lengths (B,))."""
