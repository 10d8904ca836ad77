"""The UPMP backend: universal pooling of multi-layer features (docs/method.md).

Input: a layer stack x (B, D, L, T) and a frame mask (B, T); output: speaker
embeddings (B, E). Steps (docs/method.md, "UPMP, step by step"): 1. projection, 2. blocks of
layer-wise attentive VAD + dense multi-dilated convolution with channel
attention, 3. layer attentive pooling, 4. attentive statistics pooling.

Choices where the description allows two readings:
- The residual of a block: `residual: once` adds it once (x + f(x)), the
  default; `residual: reference` adds it twice (2x + f(x)), as the authors'
  UniPool code does (a ResConnection inside the block plus x + dense(x) in
  D3Block.forward, both on the VAD's output), so their checkpoints import.
- The context std of the statistics pooling: `pooling: masked` (/ n over valid
  frames, the default) or `pooling: authors` (the UniPool code's: / n in
  training, where it passes a mask, and x.std() with n - 1 in evaluation, where
  it passes none).
- The L mixing logits of the VAD start one-hot (logit 1 at layer i, 0 elsewhere)
  and go through a softmax, as in SUPERB.
- Padded frames are zeroed before every 3x3 convolution, and global
  statistics are masked, so in eval mode padding leaves an utterance's
  embedding unchanged.

The step is written for speed and memory without changing the maths (see
benchmarks/backend_step.py, which times it against the plain formulation).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from upmp.backends.authors import map_authors_state, renamer
from upmp.backends.base import Backend
from upmp.backends.pooling import AttentiveStatisticsPooling, LayerAttentivePooling, full_mask_if_none, padding_mask
from upmp.errors import ConfigError, ModelFileError


def _frame_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, T) bool -> (B, 1, 1, T) float for multiplying (B, C, L, T) tensors;
    None (every frame valid) stays None."""
    return None if mask is None else mask[:, None, None, :].float()


class LayerwiseAttentiveVAD(nn.Module):
    """Step 2a. (B, C, L, T) -> (B, C, L, T): per-layer SUPERB mixing, then a
    per-layer sigmoid frame score s[i, t] = sigmoid(w_i . x[:, i, t] + b_i).

    The L weighted sums are one (L x L) matrix product over the layer axis of x
    (no copy of x). The scores use linearity: w_i . (sum_l mix[i, l] x_l) =
    sum_l mix[i, l] (w_i . x_l), so the small (B, L, L, T) tensor of all w_i . x_l
    is formed from x directly, instead of a permuted copy of the mixed x.
    """

    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.mix_logits = nn.Parameter(torch.eye(num_layers))  # row i: weights of output layer i
        self.frame_weight = nn.Parameter(torch.empty(num_layers, channels))
        self.frame_bias = nn.Parameter(torch.zeros(num_layers))
        nn.init.xavier_uniform_(self.frame_weight)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, C, L, T = x.shape
        mix = torch.softmax(self.mix_logits, dim=-1)  # (L_out, L_in)
        mixed = torch.matmul(mix, x)  # (B, C, L_out, T)
        per_layer = torch.matmul(self.frame_weight, x.reshape(B, C, L * T)).view(B, L, L, T)  # (B, i, l, T)
        logits = (per_layer * mix[None, :, :, None]).sum(dim=2) + self.frame_bias[None, :, None]
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        return mixed * torch.sigmoid(logits).unsqueeze(1)


class ChannelAttention(nn.Module):
    """CBAM-like channel attention over (L, T) with masked global average and max.

    forward(x, mask, residual) returns residual + x * scale (one fused multiply-add)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()

        def mlp():
            return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.BatchNorm2d(hidden),
                                 nn.Conv2d(hidden, channels, 1))
        self.mlp_avg, self.mlp_max = mlp(), mlp()

    def scale(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C, L, T) -> (B, C, 1, 1) channel weights in (0, 1)."""
        m = _frame_mask(mask)
        if m is None:
            avg = x.mean(dim=(2, 3), keepdim=True)
            mx = x.flatten(2).max(dim=2).values[:, :, None, None]  # max(dim): argmax backward
        else:
            count = (m.sum(dim=3, keepdim=True) * x.shape[2]).clamp(min=1.0)
            avg = (x * m).sum(dim=(2, 3), keepdim=True) / count
            mx = x.masked_fill(m == 0, float("-inf")).flatten(2).max(dim=2).values[:, :, None, None]
        return torch.sigmoid(self.mlp_avg(avg) + self.mlp_max(mx))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        scale = self.scale(x, mask)
        return x * scale if residual is None else torch.addcmul(residual, x, scale)


class MultiDilatedLayer(nn.Module):
    """Layer k of a D3Net D2 block: reads y_0..y_{k-1}, each through
    BN -> ReLU -> Conv 3x3 with dilation d_j, and sums the results."""

    def __init__(self, channels: int, dilations: Sequence[int]):
        super().__init__()
        # ReLU in place: BN's backward needs its input, not its output
        self.branches = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                          nn.Conv2d(channels, channels, 3, dilation=d, padding=d))
            for d in dilations)

    def forward(self, inputs: List[torch.Tensor], m: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = None
        for branch, y in zip(self.branches, inputs):
            bn_relu, conv = branch[:2], branch[2]
            h = bn_relu(y)
            if m is not None:
                h = h * m  # zero padded frames before the 3x3 conv
            # a conv's output is not saved for its backward, so the sum can run in place
            out = conv(h) if out is None else out.add_(conv(h))
        return out


RESIDUALS = ("once", "reference")


class DenseMultiDilatedBlock(nn.Module):
    """Step 2b. (B, 4c, L, T) -> (B, 4c, L, T), residual: x + CA(concat(y0..y3)),
    or 2x + CA(...) with residual "reference" (the authors' code)."""

    def __init__(self, conv_dim: int, dilations: Sequence[int] = (1, 2, 4), residual: str = "once"):
        super().__init__()
        if residual not in RESIDUALS:
            raise ConfigError(f"backend_conf.residual: {residual!r}; choose from {', '.join(RESIDUALS)}")
        self.residual_scale = 1 if residual == "once" else 2
        self.entry = nn.Conv2d(4 * conv_dim, conv_dim, 1)
        self.layers = nn.ModuleList(MultiDilatedLayer(conv_dim, dilations[:k])
                                    for k in range(1, len(dilations) + 1))
        self.attention = ChannelAttention(conv_dim * (len(dilations) + 1), conv_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = _frame_mask(mask)
        ys = [self.entry(x)]
        for layer in self.layers:
            ys.append(layer(ys, m))
        residual = x if self.residual_scale == 1 else x * self.residual_scale  # x * 2 is exact
        return self.attention(torch.cat(ys, dim=1), mask, residual=residual)


class UPMPBackend(Backend):
    """(B, D, L, T) + mask (B, T) -> (B, embed_dim).

    Args:
        input_dim: D of the upstream.
        num_layers: L hidden states given to the backend (after dropping
            hidden state 0 when use_hidden0 is False).
        conv_dim: c; the block width is 4c.
        residual: "once" (x + f(x)) or "reference" (2x + f(x), the authors' UniPool code).
        pooling: "masked" (ours) or "authors": the context std of the attentive statistics pooling
            as the UniPool code computes it (/ n in training, x.std() with n - 1 in evaluation,
            unclamped), so an imported model embeds as the authors' evaluation does.
    """

    padding_invariant = True

    def __init__(self, input_dim: int, num_layers: int, conv_dim: int = 128, n_blocks: int = 1,
                 heads: int = 4, embed_dim: int = 192, dropout: float = 0.1, residual: str = "once",
                 pooling: str = "masked"):
        super().__init__()
        width = 4 * conv_dim
        self.projection = nn.Sequential(nn.Conv2d(input_dim, width, 1), nn.BatchNorm2d(width))
        self.vads = nn.ModuleList(LayerwiseAttentiveVAD(width, num_layers) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(DenseMultiDilatedBlock(conv_dim, residual=residual) for _ in range(n_blocks))
        self.layer_pooling = LayerAttentivePooling(width * n_blocks, width, num_layers, heads, dropout)
        if pooling not in ("masked", "authors"):
            raise ConfigError(f"backend_conf.pooling: {pooling!r}; choose from masked, authors")
        self.frame_pooling = AttentiveStatisticsPooling(
            width, embed_dim, dropout, context_std="population" if pooling == "masked" else "unbiased_in_eval")
        self.embed_dim = embed_dim

    def _block_outputs(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Steps 1-2: (B, D, L, T) -> the blocks' outputs stacked on channels (B, 4c * n_blocks, L, T).
        mask None: no frame is padded (the blocks then skip masking)."""
        x = self.projection(x)
        outputs = []
        for vad, block in zip(self.vads, self.blocks):
            x = block(vad(x, mask), mask)
            outputs.append(x)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        full = full_mask_if_none(x, mask)  # the pooling layers' statistics want a mask
        x = self.layer_pooling(self._block_outputs(x, padding_mask(x, mask)), full)
        return self.frame_pooling(x, full)

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The VADs' layer-mixing matrices (softmax rows) and the layer attention score per head."""
        out = {f"VAD mixing, block {i + 1} (row: output layer)": torch.softmax(vad.mix_logits, -1)
               for i, vad in enumerate(self.vads)}
        blocks = self._block_outputs(x, padding_mask(x, mask))
        out["layer attention score (row: head)"] = self.layer_pooling.mean_scores(blocks, full_mask_if_none(x, mask))
        return out

    # The authors' UniPool encoder (UniPool-SV src/benchmarks/UniPool/model.py: encoder.d3net / l_pool /
    # t_pool of model_state, "encoder." stripped) -> this backend; see upmp.backends.authors.

    _AUTHORS_RULES = (
        (r"projection\.(.*)", r"d3net.projection.\1"),
        (r"vads\.(\d+)\.frame_weight", r"d3net.vadnet.\1.weight"),
        (r"vads\.(\d+)\.frame_bias", r"d3net.vadnet.\1.bias"),
        (r"blocks\.(\d+)\.entry\.(.*)", r"d3net.densenet.\1.m.0.projection.\2"),
        (r"blocks\.(\d+)\.layers\.(\d+)\.branches\.(.*)", r"d3net.densenet.\1.m.0.dense.\2.mdconv.\3"),
        (r"blocks\.(\d+)\.attention\.mlp_avg\.0\.(.*)", r"d3net.densenet.\1.m.1.avg_se.1.\2"),
        (r"blocks\.(\d+)\.attention\.mlp_avg\.2\.(.*)", r"d3net.densenet.\1.m.1.avg_se.3.\2"),
        (r"blocks\.(\d+)\.attention\.mlp_avg\.3\.(.*)", r"d3net.densenet.\1.m.1.avg_se.4.\2"),
        (r"blocks\.(\d+)\.attention\.mlp_max\.0\.(.*)", r"d3net.densenet.\1.m.1.max_se.1.\2"),
        (r"blocks\.(\d+)\.attention\.mlp_max\.2\.(.*)", r"d3net.densenet.\1.m.1.max_se.3.\2"),
        (r"blocks\.(\d+)\.attention\.mlp_max\.3\.(.*)", r"d3net.densenet.\1.m.1.max_se.4.\2"),
        (r"layer_pooling\.norm\.(.*)", r"l_pool.in_projection.0.\1"),
        (r"layer_pooling\.proj\.(.*)", r"l_pool.in_projection.1.\1"),
        (r"layer_pooling\.w(\d)", r"l_pool.W\1"),
        (r"layer_pooling\.b(\d)", r"l_pool.b\1"),
        (r"layer_pooling\.out\.(.*)", r"l_pool.out_projection.\1"),
        (r"frame_pooling\.attention\.(.*)", r"t_pool.attention.\1"),
        (r"frame_pooling\.bn_stats\.(.*)", r"t_pool.attn_norm.\1"),
        (r"frame_pooling\.linear\.(.*)", r"t_pool.out_proj.\1"),
        (r"frame_pooling\.bn_embed\.(.*)", r"t_pool.out_norm.\1"),
    )

    @classmethod
    def authors_layout(cls, encoder: Dict[str, torch.Tensor], prefix: str = "encoder.") -> Tuple[int, int, Dict[str, Any]]:
        """(input_dim D, num_layers L, backend_conf) of the authors' UniPool encoder, from its shapes.
        Their layer pooling always has 4 heads, their block adds its residual twice and their
        statistics pooling is the authors' form (pooling: authors)."""
        for key in ("d3net.projection.0.weight", "d3net.vadnet.0.weight", "t_pool.out_proj.weight"):
            if key not in encoder:
                raise ModelFileError(f"{prefix}{key}: missing from the checkpoint; not the authors' UniPool encoder")
        width, input_dim = encoder["d3net.projection.0.weight"].shape[:2]
        n_blocks = sum(1 for k in encoder if re.fullmatch(r"d3net\.vadnet\.\d+\.weight", k))
        conf = dict(conv_dim=width // 4, n_blocks=n_blocks, heads=4,
                    embed_dim=encoder["t_pool.out_proj.weight"].shape[0], dropout=0.1, residual="reference",
                    pooling="authors")
        return int(input_dim), int(encoder["d3net.vadnet.0.weight"].shape[0]), conf

    def state_from_authors(self, encoder: Dict[str, torch.Tensor], prefix: str = "encoder.") -> Dict[str, torch.Tensor]:
        """Our state dict holding the authors' encoder weights (mixing row i = superb[i].score_vector)."""
        rename = renamer(self._AUTHORS_RULES)

        def source(key: str):
            m = re.fullmatch(r"vads\.(\d+)\.mix_logits", key)
            if m:
                return [f"d3net.vadnet.{m.group(1)}.superb.{i}.score_vector" for i in range(self.vads[0].mix_logits.shape[0])]
            return rename(key)
        return map_authors_state(self.state_dict(), encoder, source, prefix)
