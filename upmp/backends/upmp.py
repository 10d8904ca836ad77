"""The UPMP backend: universal pooling of multi-layer features (method.md).

Input: a layer stack x (B, D, L, T) and a frame mask (B, T); output: speaker
embeddings (B, E). Steps (method.md, "Backend"): 1. projection, 2. blocks of
layer-wise attentive VAD + dense multi-dilated convolution with channel
attention, 3. layer attentive pooling, 4. attentive statistics pooling.

Choices where the description allows two readings:
- The residual of a block is added once (x + f(x)), not twice as in the
  reference code.
- The L mixing logits of the VAD start one-hot (logit 1 at layer i, 0 elsewhere)
  and go through a softmax, as in SUPERB.
- Padded frames are zeroed before every 3x3 convolution, and global
  statistics are masked, so in eval mode padding leaves an utterance's
  embedding unchanged.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from upmp.backends.base import Backend
from upmp.backends.pooling import AttentiveStatisticsPooling, full_mask_if_none
from upmp.errors import ConfigError


def _frame_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, 1, 1, T) float for multiplying (B, C, L, T) tensors."""
    return mask[:, None, None, :].float()


class LayerwiseAttentiveVAD(nn.Module):
    """Step 2a. (B, C, L, T) -> (B, C, L, T): per-layer SUPERB mixing, then a
    per-layer sigmoid frame score s[i, t] = sigmoid(w_i . x[:, i, t] + b_i)."""

    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.mix_logits = nn.Parameter(torch.eye(num_layers))  # row i: weights of output layer i
        self.frame_weight = nn.Parameter(torch.empty(num_layers, channels))
        self.frame_bias = nn.Parameter(torch.zeros(num_layers))
        nn.init.xavier_uniform_(self.frame_weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mix = torch.softmax(self.mix_logits, dim=-1)  # (L_out, L_in)
        x = torch.einsum("bclt,ml->bcmt", x, mix)
        logits = torch.einsum("bclt,lc->blt", x, self.frame_weight) + self.frame_bias[None, :, None]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        return x * torch.sigmoid(logits).unsqueeze(1)


class ChannelAttention(nn.Module):
    """CBAM-like channel attention over (L, T) with masked global average and max."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()

        def mlp():
            return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.BatchNorm2d(hidden),
                                 nn.Conv2d(hidden, channels, 1))
        self.mlp_avg, self.mlp_max = mlp(), mlp()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _frame_mask(mask)
        count = (m.sum(dim=3, keepdim=True) * x.shape[2]).clamp(min=1.0)
        avg = (x * m).sum(dim=(2, 3), keepdim=True) / count
        mx = x.masked_fill(m == 0, float("-inf")).amax(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.mlp_avg(avg) + self.mlp_max(mx))


class MultiDilatedLayer(nn.Module):
    """Layer k of a D3Net D2 block: reads y_0..y_{k-1}, each through
    BN -> ReLU -> Conv 3x3 with dilation d_j, and sums the results."""

    def __init__(self, channels: int, dilations: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, dilation=d, padding=d))
            for d in dilations)

    def forward(self, inputs: List[torch.Tensor], m: torch.Tensor) -> torch.Tensor:
        out = 0
        for branch, y in zip(self.branches, inputs):
            bn_relu, conv = branch[:2], branch[2]
            out = out + conv(bn_relu(y) * m)  # zero padded frames before the 3x3 conv
        return out


class DenseMultiDilatedBlock(nn.Module):
    """Step 2b. (B, 4c, L, T) -> (B, 4c, L, T), residual: x + CA(concat(y0..y3))."""

    def __init__(self, conv_dim: int, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        self.entry = nn.Conv2d(4 * conv_dim, conv_dim, 1)
        self.layers = nn.ModuleList(MultiDilatedLayer(conv_dim, dilations[:k])
                                    for k in range(1, len(dilations) + 1))
        self.attention = ChannelAttention(conv_dim * (len(dilations) + 1), conv_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _frame_mask(mask)
        ys = [self.entry(x)]
        for layer in self.layers:
            ys.append(layer(ys, m))
        return x + self.attention(torch.cat(ys, dim=1), mask)


class LayerAttentivePooling(nn.Module):
    """Step 3. (B, C_in, L, T) -> (B, C_out, T): per-head layer scores from the
    channel mean and max, a per-head MLP over layers, then max over layers and a
    1x1 Conv1d (C -> C_out, C_out = C unless given) with BN."""

    def __init__(self, in_channels: int, channels: int, num_layers: int, heads: int,
                 dropout: float = 0.1, out_channels: Optional[int] = None):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"channels {channels} must be divisible by heads {heads}")
        self.heads = heads
        hidden = max(1, num_layers // 2)
        self.norm = nn.BatchNorm2d(in_channels)
        self.proj = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.w1 = nn.Parameter(torch.empty(heads, num_layers, hidden))
        self.b1 = nn.Parameter(torch.zeros(heads, hidden))
        self.w2 = nn.Parameter(torch.empty(heads, hidden, num_layers))
        self.b2 = nn.Parameter(torch.zeros(heads, num_layers))
        for w in (self.w1, self.w2):
            for h in range(heads):
                nn.init.xavier_uniform_(w[h])
        self.dropout = nn.Dropout(dropout)
        out_channels = out_channels or channels
        self.out = nn.Sequential(nn.Conv1d(channels, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels))

    def _layer_mlp(self, z: torch.Tensor) -> torch.Tensor:
        """(B, h, L, T) -> (B, h, L, T): an MLP over L for each head."""
        hidden = torch.relu(torch.einsum("bhlt,hlk->bhkt", z, self.w1) + self.b1[None, :, :, None])
        return torch.einsum("bhkt,hkl->bhlt", hidden, self.w2) + self.b2[None, :, :, None]

    def _scores(self, x: torch.Tensor):
        """(B, C_in, L, T) -> projected input split by head (B, h, C/h, L, T), layer scores (B, h, L, T)."""
        x = self.proj(self.norm(x))
        B, C, L, T = x.shape
        xh = x.view(B, self.heads, C // self.heads, L, T)
        return xh, torch.sigmoid(self._layer_mlp(xh.mean(dim=2)) + self._layer_mlp(xh.amax(dim=2)))

    def mean_scores(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The layer score per head and layer (h, L), averaged over the batch's valid frames."""
        score = self._scores(x)[1]
        valid = mask[:, None, None, :].to(score.dtype)
        return (score * valid).sum(dim=(0, 3)) / valid.sum(dim=(0, 3)).clamp(min=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        xh, score = self._scores(x)
        B, h, c, L, T = xh.shape
        pooled = (xh * self.dropout(score).unsqueeze(2)).view(B, h * c, L, T).amax(dim=2)
        return self.out(pooled)


class UPMPBackend(Backend):
    """(B, D, L, T) + mask (B, T) -> (B, embed_dim).

    Args:
        input_dim: D of the upstream.
        num_layers: L hidden states given to the backend (after dropping
            hidden state 0 when use_hidden0 is False).
        conv_dim: c; the block width is 4c.
    """

    padding_invariant = True

    def __init__(self, input_dim: int, num_layers: int, conv_dim: int = 128, n_blocks: int = 1,
                 heads: int = 4, embed_dim: int = 192, dropout: float = 0.1):
        super().__init__()
        width = 4 * conv_dim
        self.projection = nn.Sequential(nn.Conv2d(input_dim, width, 1), nn.BatchNorm2d(width))
        self.vads = nn.ModuleList(LayerwiseAttentiveVAD(width, num_layers) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(DenseMultiDilatedBlock(conv_dim) for _ in range(n_blocks))
        self.layer_pooling = LayerAttentivePooling(width * n_blocks, width, num_layers, heads, dropout)
        self.frame_pooling = AttentiveStatisticsPooling(width, embed_dim, dropout)
        self.embed_dim = embed_dim

    def _block_outputs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: (B, D, L, T) -> the blocks' outputs stacked on channels (B, 4c * n_blocks, L, T)."""
        x = self.projection(x)
        outputs = []
        for vad, block in zip(self.vads, self.blocks):
            x = block(vad(x, mask), mask)
            outputs.append(x)
        return torch.cat(outputs, dim=1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = full_mask_if_none(x, mask)
        x = self.layer_pooling(self._block_outputs(x, mask), mask)
        return self.frame_pooling(x, mask)

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The VADs' layer-mixing matrices (softmax rows) and the layer attention score per head."""
        out = {f"VAD mixing, block {i + 1} (row: output layer)": torch.softmax(vad.mix_logits, -1)
               for i, vad in enumerate(self.vads)}
        out["layer attention score (row: head)"] = self.layer_pooling.mean_scores(self._block_outputs(x, mask), mask)
        return out
