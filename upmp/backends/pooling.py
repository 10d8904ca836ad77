"""Attentive statistics pooling (ECAPA-TDNN style) with frame masks (method.md, step 4)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def full_mask_if_none(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The frame mask (B, T) of x (B, ..., T): all frames valid when none is given."""
    if mask is None:
        return torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
    return mask


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4):
    """x (B, C, T), mask (B, T) bool -> mean, std (B, C, 1) over valid frames."""
    w = mask.unsqueeze(1).to(x.dtype)
    n = w.sum(dim=2, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=2, keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum(dim=2, keepdim=True) / n
    return mean, var.clamp(min=eps).sqrt()


class AttentiveStatisticsPooling(nn.Module):
    """(B, C, T) + mask (B, T) -> (B, embed_dim).

    Context [x, mean, std] -> Conv1d 3C->C/2, ReLU, BN, Conv1d C/2->C -> masked
    softmax over T (dropout) -> weighted mean and std (variance clamped at 1e-4)
    -> BN(2C) -> Linear(2C, E) -> BN(E).
    """

    def __init__(self, channels: int, embed_dim: int = 192, dropout: float = 0.1):
        super().__init__()
        hidden = channels // 2
        self.attention = nn.Sequential(
            nn.Conv1d(3 * channels, hidden, 1), nn.ReLU(), nn.BatchNorm1d(hidden),
            nn.Conv1d(hidden, channels, 1))
        self.dropout = nn.Dropout(dropout)
        self.bn_stats = nn.BatchNorm1d(2 * channels)
        self.linear = nn.Linear(2 * channels, embed_dim)
        self.bn_embed = nn.BatchNorm1d(embed_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        T = x.shape[2]
        mask = full_mask_if_none(x, mask)
        mean, std = masked_mean_std(x, mask)
        context = torch.cat([x, mean.expand(-1, -1, T), std.expand(-1, -1, T)], dim=1)
        logits = self.attention(context).masked_fill(~mask.unsqueeze(1), float("-inf"))
        w = self.dropout(torch.softmax(logits, dim=2))
        mu = (w * x).sum(dim=2)
        sigma = ((w * x * x).sum(dim=2) - mu * mu).clamp(min=1e-4).sqrt()
        stats = self.bn_stats(torch.cat([mu, sigma], dim=1))
        return self.bn_embed(self.linear(stats))
