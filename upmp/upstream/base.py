"""The base of every upstream: frozen by default, trainable on request (joint fine-tuning).

A subclass implements `extract(wavs (B, N), wav_lens (B,)) -> (stack (B, D, L, T), lengths (B,))`
and sets num_layers, dim and frame_shift. Frozen (the default), the module stays in eval
mode whatever train() is called with, its parameters need no gradients and forward runs
under no_grad. `set_trainable(True)` unfreezes it: gradients flow, and train() switches
dropout etc. on as for any module.
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch
from torch import nn


class Upstream(nn.Module, metaclass=abc.ABCMeta):
    num_layers: int
    dim: int
    frame_shift: float
    trainable: bool = False

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
            return self.extract(wavs, wav_lens)

    @abc.abstractmethod
    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The provider's forward pass: (B, N) waveforms -> (stack (B, D, L, T), frame lengths (B,))."""
