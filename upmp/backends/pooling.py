"""Pooling layers shared by the backends, with frame masks.

- LayerAttentivePooling (B, C, L, T) -> (B, C_out, T): squeezes the layer axis
  (docs/method.md, UPMP step 3; the LAP backend uses it straight on the hidden states).
- AttentiveStatisticsPooling (B, C, T) -> (B, E): ECAPA-TDNN style pooling over
  frames (UPMP step 4; also LAP's ASTP).
- full_mask_if_none / padding_mask: the frame mask (B, T) as the poolings / the masked
  convolutions of the UPMP and L-TDNN blocks take it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from upmp.errors import ConfigError


def full_mask_if_none(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The frame mask (B, T) of x (B, ..., T): all frames valid when none is given."""
    if mask is None:
        return torch.ones(x.shape[0], x.shape[-1], dtype=torch.bool, device=x.device)
    return mask


def padding_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The mask a backend's masked blocks need: None when every frame of x (B, ..., T) is
    valid (training crops), so the masking products (all by 1) are skipped."""
    if torch.jit.is_tracing():  # an exported graph must mask whatever it is given
        return full_mask_if_none(x, mask)
    if mask is None or bool(mask.all()):
        return None
    return mask


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-4, unbiased: bool = False):
    """x (B, C, T), mask (B, T) bool -> mean, std (B, C, 1) over valid frames
    (unbiased: the variance divided by n - 1, as torch's x.std())."""
    w = mask.unsqueeze(1).to(x.dtype)
    n = w.sum(dim=2, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=2, keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum(dim=2, keepdim=True) / ((n - 1).clamp(min=1.0) if unbiased else n)
    return mean, var.clamp(min=eps).sqrt()


class AttentiveStatisticsPooling(nn.Module):
    """(B, C, T) + mask (B, T) -> (B, embed_dim).

    Context [x, mean, std] -> Conv1d 3C->C/2, ReLU, BN, Conv1d C/2->C -> masked
    softmax over T (dropout) -> weighted mean and std (variance clamped at 1e-4)
    -> BN(2C) -> Linear(2C, E) -> BN(E).

    context_std: the std of the context. "population" (ours: / n, variance clamped at 1e-4);
    "unbiased" (/ (n - 1), as x.std(): the LAP code calls its pooling without a mask);
    "unbiased_in_eval" (the UniPool code: its masked / n std in training, x.std() in evaluation,
    where it passes no mask). Both authors' forms leave the variance unclamped (1e-10 against a 0).
    frame_dropout: the attention dropout removes whole frames from the softmax in training (the
    LAP code; no rescaling) instead of zeroing and rescaling single weights.
    Every form stays masked: a padded batch embeds as one utterance at a time.
    """

    CONTEXT_STDS = ("population", "unbiased", "unbiased_in_eval")

    def __init__(self, channels: int, embed_dim: int = 192, dropout: float = 0.1, context_std: str = "population",
                 frame_dropout: bool = False):
        super().__init__()
        if context_std not in self.CONTEXT_STDS:
            raise ConfigError(f"context_std {context_std!r}; choose from {', '.join(self.CONTEXT_STDS)}")
        self.context_std, self.frame_dropout = context_std, frame_dropout
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
        unbiased = self.context_std == "unbiased" or (self.context_std == "unbiased_in_eval" and not self.training)
        mean, std = masked_mean_std(x, mask, eps=1e-4 if self.context_std == "population" else 1e-10, unbiased=unbiased)
        context = torch.cat([x, mean.expand(-1, -1, T), std.expand(-1, -1, T)], dim=1)
        if self.frame_dropout:
            keep = self._frame_dropout(mask)
            w = torch.softmax(self.attention(context).masked_fill(~keep.unsqueeze(1), float("-inf")), dim=2)
        else:
            logits = self.attention(context).masked_fill(~mask.unsqueeze(1), float("-inf"))
            w = self.dropout(torch.softmax(logits, dim=2))
        mu = (w * x).sum(dim=2)
        sigma = ((w * x * x).sum(dim=2) - mu * mu).clamp(min=1e-4).sqrt()
        stats = self.bn_stats(torch.cat([mu, sigma], dim=1))
        return self.bn_embed(self.linear(stats))

    def _frame_dropout(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> the frames the softmax sees: in training each valid frame is dropped with
        probability p (an utterance that would lose all keeps them all)."""
        p = self.dropout.p
        if not self.training or p == 0:
            return mask
        keep = mask & (torch.rand(mask.shape, device=mask.device) >= p)
        return torch.where(keep.any(dim=1, keepdim=True), keep, mask)


class LayerAttentivePooling(nn.Module):
    """Step 3. (B, C_in, L, T) -> (B, C_out, T): per-head layer scores from the
    channel mean and max, a per-head MLP over layers, then max over layers and a
    1x1 Conv1d (C -> C_out, C_out = C unless given) with BN.

    bias: whether the two 1x1 convolutions carry biases (UPMP's stage has none;
    the LAP follow-up's code has them).
    """

    def __init__(self, in_channels: int, channels: int, num_layers: int, heads: int,
                 dropout: float = 0.1, out_channels: Optional[int] = None, bias: bool = False):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        hidden = max(1, num_layers // 2)
        self.norm = nn.BatchNorm2d(in_channels)
        self.proj = nn.Conv2d(in_channels, channels, 1, bias=bias)
        self.w1 = nn.Parameter(torch.empty(heads, num_layers, hidden))
        self.b1 = nn.Parameter(torch.zeros(heads, hidden))
        self.w2 = nn.Parameter(torch.empty(heads, hidden, num_layers))
        self.b2 = nn.Parameter(torch.zeros(heads, num_layers))
        for w in (self.w1, self.w2):
            for h in range(heads):
                nn.init.xavier_uniform_(w[h])
        self.dropout = nn.Dropout(dropout)
        out_channels = out_channels or channels
        self.out = nn.Sequential(nn.Conv1d(channels, out_channels, 1, bias=bias), nn.BatchNorm1d(out_channels))

    def _layer_mlp(self, z: torch.Tensor) -> torch.Tensor:
        """(B, h, L, T) -> (B, h, L, T): an MLP over L for each head."""
        hidden = torch.relu(torch.einsum("bhlt,hlk->bhkt", z, self.w1) + self.b1[None, :, :, None])
        return torch.einsum("bhkt,hkl->bhlt", hidden, self.w2) + self.b2[None, :, :, None]

    def _scores(self, x: torch.Tensor):
        """(B, C_in, L, T) -> projected input split by head (B, h, C/h, L, T), layer scores (B, h, L, T)."""
        x = self.proj(self.norm(x))
        B, C, L, T = x.shape
        xh = x.view(B, self.heads, C // self.heads, L, T)
        # max(dim) rather than amax: its backward routes the gradient through the stored
        # argmax (cheap) instead of comparing against the full input (equal but at exact ties)
        return xh, torch.sigmoid(self._layer_mlp(xh.mean(dim=2)) + self._layer_mlp(xh.max(dim=2).values))

    def mean_scores(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The layer score per head and layer (h, L), averaged over the batch's valid frames."""
        score = self._scores(x)[1]
        valid = mask[:, None, None, :].to(score.dtype)
        return (score * valid).sum(dim=(0, 3)) / valid.sum(dim=(0, 3)).clamp(min=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xh, score = self._scores(x)
        return self.out(self._max_over_layers(xh, self.dropout(score)))

    @staticmethod
    def _max_over_layers(xh: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """max over L of xh * score: (B, h, k, L, T), (B, h, L, T) -> (B, h*k, T)."""
        B, h, k, L, T = xh.shape
        if torch.jit.is_tracing() or not (torch.is_grad_enabled() and (xh.requires_grad or score.requires_grad)):
            return (xh * score.unsqueeze(2)).max(dim=3).values.view(B, h * k, T)  # inference, ONNX export
        return _MaxOfProduct.apply(xh, score).view(B, h * k, T)


class _MaxOfProduct(torch.autograd.Function):
    """max over L of x * s for x (B, h, k, L, T) and s (B, h, L, T) -> (B, h, k, T).

    Equal to (x * s[:, :, None]).max(dim=3).values, and to its gradient but at exact
    ties, while backward keeps only the winning layer per output and the two
    winning factors: neither the (B, C, L, T) product nor x (autograd's mul would keep x).
    """

    @staticmethod
    def forward(ctx, x, s):
        B, h, k, L, T = x.shape
        idx = (x * s.unsqueeze(2)).max(dim=3, keepdim=True).indices  # (B, h, k, 1, T)
        x_sel = x.gather(3, idx).squeeze(3)
        flat = (idx.view(B, h, k, T) * T + torch.arange(T, device=x.device)).view(B, h, k * T)
        s_sel = s.reshape(B, h, L * T).gather(2, flat).view(B, h, k, T)
        ctx.save_for_backward(idx, flat, x_sel, s_sel)
        ctx.shape = (B, h, k, L, T)
        return x_sel * s_sel

    @staticmethod
    def backward(ctx, grad):
        idx, flat, x_sel, s_sel = ctx.saved_tensors
        B, h, k, L, T = ctx.shape
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = x_sel.new_zeros(B, h, k, L, T).scatter_(3, idx, (grad * s_sel).unsqueeze(3).to(x_sel.dtype))
        if ctx.needs_input_grad[1]:
            grad_s = s_sel.new_zeros(B, h, L * T).scatter_add_(2, flat, (grad * x_sel).reshape(B, h, k * T).to(s_sel.dtype))
            grad_s = grad_s.view(B, h, L, T)
        return grad_x, grad_s
