"""Layer-aware TDNN backends (arXiv 2409.07770 v2, ICAIIC 2026): L-TDNN D3Net and L-TDNN ECAPA.

Input: all hidden states x (B, D, L, T) (hidden state 0 included: `use_hidden0: true`) and a
frame mask (B, T); output: speaker embeddings (B, E). docs/method.md, "The revised paper":

    stem        BN2d(D), conv-relu-bn D -> C ('same' padding; D3Net kernel 1 layer x 5 frames,
                ECAPA 5 layers x 3 frames)
    blocks      three chained blocks on C channels (x <- block(x)):
                - ltdnn_d3net: SE-D2 blocks (depth 4: conv-relu-bn 3x3, dilation 2^d on both axes,
                  added residually, the last C/4 channels split off after each step, the splits
                  concatenated and rescaled by squeeze-excitation)
                - ltdnn_ecapa: SE-Res2 blocks, x + SE(cbr1x1(Res2(cbr1x1(x)))), dilations 2, 3, 4
    fusion      1x1 Conv2d 3C -> 3C (with bias), ReLU over the three blocks' outputs
    pooling     layer attentive pooling 3C -> 512 with 8 heads (upmp.backends.pooling, as UPMP's
                step 3, no biases), attentive statistics pooling 512 -> E

"conv-relu-bn" is the authors' post-activation unit: Conv2d -> ReLU -> BN2d.
Choices beyond the authors' code (which embeds one utterance at a time, unmasked):
- Padded frames are zeroed before every convolution that reaches across frames, and the
  squeeze-excitation averages valid frames only, so in eval mode padding leaves an
  utterance's embedding unchanged.
- eval_std "unbiased" (default) reproduces the authors' test-time pooling: their code pools
  without a mask in eval mode, so its context std is torch's x.std() (n - 1).
Initialisation as the authors': the network before the poolings xavier-uniform (weights of two or
more dimensions), zero biases; the layer pooling's projections and second layer MLP xavier, its
first layer MLP kaiming-uniform (ReLU); the frame pooling torch's defaults.

The authors' checkpoints store these modules as encoder.net.*, encoder.l_pool.*, encoder.t_pool.*;
`from_authors_state` maps them (the `encoder.` prefix stripped) onto ours.
"""
from __future__ import annotations

from abc import abstractmethod

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from upmp.backends.base import Backend
from upmp.backends.pooling import AttentiveStatisticsPooling, LayerAttentivePooling, full_mask_if_none, padding_mask
from upmp.errors import ConfigError, ModelFileError

EVAL_STD = ("unbiased", "biased")


class ConvReluBn(nn.Module):
    """Conv2d ('same' padding, odd kernel) -> ReLU -> BN2d over (B, C, L, T).

    forward(x, m): m (B, 1, 1, T) float frame mask or None; when the kernel reaches across
    frames, padded frames of the input are zeroed (the zero padding an utterance alone sees)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Tuple[int, int], dilation: int = 1):
        super().__init__()
        pad = tuple(dilation * (k - 1) // 2 for k in kernel)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, dilation=dilation, padding=pad)
        self.bn = nn.BatchNorm2d(out_channels)
        self.across_frames = kernel[1] > 1

    def forward(self, x: torch.Tensor, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        if m is not None and self.across_frames:
            x = x * m
        # in place: the conv's output is not saved for its backward; BN keeps the ReLU output
        return self.bn(F.relu(self.conv(x), inplace=True))


class SqueezeExcitation(nn.Module):
    """(B, C, L, T) -> x * sigmoid(excite(relu(squeeze(mean over valid (L, T) of x))))."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        if m is None:
            avg = x.mean(dim=(2, 3), keepdim=True)
        else:
            avg = (x * m).sum(dim=(2, 3), keepdim=True) / (m.sum(dim=3, keepdim=True) * x.shape[2]).clamp(min=1.0)
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(avg))))


class SED2Block(nn.Module):
    """(B, C, L, T) -> (B, C, L, T). Step d (d = 0..depth-1) on width w_d = C - d C/depth:
    x <- x + cbr3x3_d(x) (dilation 2^d); after each step but the last, the last C/depth
    channels leave as an output; the outputs, concatenated, are rescaled by SE."""

    def __init__(self, channels: int, depth: int, se_channels: int):
        super().__init__()
        if channels % depth:
            raise ConfigError(f"backend_conf.conv_dim {channels} must be divisible by backend_conf.depth {depth}")
        part = channels // depth
        self.widths = [channels - d * part for d in range(depth)]
        self.steps = nn.ModuleList(ConvReluBn(w, w, (3, 3), 2 ** d) for d, w in enumerate(self.widths))
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        outputs: List[torch.Tensor] = []
        for d, step in enumerate(self.steps):
            x = x + step(x, m)
            if d + 1 < len(self.steps):
                keep = self.widths[d + 1]
                outputs.append(x[:, keep:])
                x = x[:, :keep]
        outputs.append(x)
        return self.se(torch.cat(outputs, dim=1), m)


class Res2ConvReluBn(nn.Module):
    """Res2Net unit (B, C, L, T) -> (B, C, L, T): C split into `scale` groups; group i > 0 of the
    first scale - 1 goes through cbr3x3 after adding the previous group's output; the last passes."""

    def __init__(self, channels: int, dilation: int, scale: int):
        super().__init__()
        if channels % scale:
            raise ConfigError(f"backend_conf.conv_dim {channels} must be divisible by backend_conf.scale {scale}")
        self.width = channels // scale
        self.convs = nn.ModuleList(ConvReluBn(self.width, self.width, (3, 3), dilation)
                                   for _ in range(max(1, scale - 1)))

    def forward(self, x: torch.Tensor, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts = torch.split(x, self.width, dim=1)
        outputs: List[torch.Tensor] = []
        y = parts[0]
        for i, conv in enumerate(self.convs):
            y = conv(y if i == 0 else y + parts[i], m)
            outputs.append(y)
        if len(parts) > len(self.convs):
            outputs.append(parts[-1])
        return torch.cat(outputs, dim=1)


class SERes2Block(nn.Module):
    """(B, C, L, T) -> x + SE(cbr1x1(Res2(cbr1x1(x))))."""

    def __init__(self, channels: int, dilation: int, scale: int, se_channels: int):
        super().__init__()
        self.entry = ConvReluBn(channels, channels, (1, 1))
        self.res2 = Res2ConvReluBn(channels, dilation, scale)
        self.exit = ConvReluBn(channels, channels, (1, 1))
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x + self.se(self.exit(self.res2(self.entry(x), m)), m)


class LayerAwareTDNN(Backend):
    """Shared by both variants: stem, blocks (in the subclass), fusion and the two poolings.
    (B, D, L, T) + mask (B, T) -> (B, embed_dim)."""

    padding_invariant = True
    kind: str                     # the registry name
    stem_kernel: Tuple[int, int]  # (layers, frames)

    def _build_common(self, input_dim: int, num_layers: int, conv_dim: int, n_blocks: int, hidden: int,
                      heads: int, embed_dim: int, dropout: float, eval_std: str) -> None:
        if eval_std not in EVAL_STD:
            raise ConfigError(f"backend_conf.eval_std {eval_std!r}: choose {' or '.join(EVAL_STD)}")
        self.stem_norm = nn.BatchNorm2d(input_dim)
        self.stem = ConvReluBn(input_dim, conv_dim, self.stem_kernel)
        width = n_blocks * conv_dim
        self.fusion = nn.Conv2d(width, width, 1)
        self.layer_pooling = LayerAttentivePooling(width, hidden, num_layers, heads, dropout, bias=False)
        self.frame_pooling = AttentiveStatisticsPooling(
            hidden, embed_dim, dropout, context_std="unbiased_in_eval" if eval_std == "unbiased" else "population")
        self.embed_dim = embed_dim

    def _init_as_the_authors(self) -> None:
        for module in [self.stem_norm, self.stem, self.blocks, self.fusion]:
            for name, p in module.named_parameters():
                if name.endswith("weight") and p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
        lp = self.layer_pooling
        nn.init.xavier_uniform_(lp.proj.weight)
        nn.init.xavier_uniform_(lp.out[0].weight)
        nn.init.kaiming_uniform_(lp.w1, nonlinearity="relu")
        nn.init.xavier_uniform_(lp.w2)

    def _blocks(self, x: torch.Tensor, m: Optional[torch.Tensor]) -> List[torch.Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x, m)
            outputs.append(x)
        return outputs

    def _features(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Stem, blocks and fusion: (B, D, L, T) -> (B, 3C, L, T); mask None: no frame is padded."""
        m = None if mask is None else mask[:, None, None, :].to(x.dtype)
        x = self.stem(self.stem_norm(x), m)
        return F.relu(self.fusion(torch.cat(self._blocks(x, m), dim=1)), inplace=True)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        full = full_mask_if_none(x, mask)
        x = self.layer_pooling(self._features(x, padding_mask(x, mask)), full)
        return self.frame_pooling(x, full)

    def layer_usage(self, x: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The layer attention score per head, averaged over the batch's valid frames."""
        features = self._features(x, padding_mask(x, mask))
        return {"layer attention score (row: head)": self.layer_pooling.mean_scores(features, mask)}

    # ------------------------------------------------------------ the authors' checkpoints
    @classmethod
    @abstractmethod
    def authors_conf(cls, encoder_state: Dict[str, torch.Tensor]) -> dict:
        """input_dim, num_layers and backend_conf implied by the authors' encoder state
        (keys of their `encoder.*`, prefix stripped); each form reads its own block's shapes."""

    @classmethod
    def from_authors_state(cls, encoder_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The authors' encoder state (their checkpoint's `encoder.*` keys, prefix stripped) ->
        this backend's state_dict, for a backend built with authors_conf(encoder_state).
        A key missing, of another shape or left over: ModelFileError naming the first such key."""
        conf = cls.authors_conf(encoder_state)
        with torch.device("meta"):
            ours = cls(conf["input_dim"], conf["num_layers"], **conf["backend_conf"]).state_dict()
        out, used = {}, set()
        for key, want in ours.items():
            theirs, reshape = cls._authors_key(key)
            if theirs not in encoder_state:
                raise ModelFileError(f"authors' checkpoint: encoder.{theirs} is missing (needed for {cls.kind}); "
                                     f"is this a {cls.kind} model_best.pt?")
            value = encoder_state[theirs]
            if reshape:
                value = value.reshape(-1, value.shape[-1]) if value.dim() == 3 else value
            if tuple(value.shape) != tuple(want.shape):
                raise ModelFileError(f"authors' checkpoint: encoder.{theirs} has shape {tuple(encoder_state[theirs].shape)}, "
                                     f"{cls.kind} needs {tuple(want.shape)}; is this a {cls.kind} model_best.pt?")
            out[key] = value.detach().clone()
            used.add(theirs)
        for theirs in encoder_state:
            if theirs not in used:
                raise ModelFileError(f"authors' checkpoint: encoder.{theirs} is not part of {cls.kind}; "
                                     f"is this a {cls.kind} model_best.pt?")
        return out

    @classmethod
    def _authors_key(cls, ours: str) -> Tuple[str, bool]:
        """Our state key -> (the authors' encoder key, whether a (h, 1, n) bias becomes (h, n))."""
        pooling = {"layer_pooling.norm.": "l_pool.in_projection.0.", "layer_pooling.proj.": "l_pool.in_projection.1.",
                   "layer_pooling.out.0.": "l_pool.out_projection.0.", "layer_pooling.out.1.": "l_pool.out_projection.1.",
                   "frame_pooling.attention.": "t_pool.attention.", "frame_pooling.bn_stats.": "t_pool.attn_norm.",
                   "frame_pooling.linear.": "t_pool.out_proj.", "frame_pooling.bn_embed.": "t_pool.out_norm."}
        mlp = {"layer_pooling.w1": "l_pool.W1", "layer_pooling.w2": "l_pool.W2",
               "layer_pooling.b1": "l_pool.b1", "layer_pooling.b2": "l_pool.b2"}
        if ours in mlp:
            return mlp[ours], ours.endswith(("b1", "b2"))
        for prefix, theirs in pooling.items():
            if ours.startswith(prefix):
                return theirs + ours[len(prefix):], False
        net = {"stem_norm.": "in_conv.0.", "stem.": "in_conv.1.", "fusion.": "fusion.0."}
        for prefix, theirs in net.items():
            if ours.startswith(prefix):
                return "net." + theirs + ours[len(prefix):], False
        return "net." + cls._authors_block_key(ours), False

    @classmethod
    @abstractmethod
    def _authors_block_key(cls, ours: str) -> str:
        """The authors' name (below `net.`) of one of our block parameters; each form has its own."""

    @staticmethod
    def _layer_pooling_conf(encoder_state: Dict[str, torch.Tensor]) -> dict:
        heads, num_layers, _ = encoder_state["l_pool.W1"].shape
        return dict(num_layers=num_layers, heads=heads, hidden=encoder_state["l_pool.in_projection.1.weight"].shape[0],
                    embed_dim=encoder_state["t_pool.out_proj.weight"].shape[0])


def _require(encoder_state: Dict[str, torch.Tensor], kind: str, *keys: str) -> None:
    for key in keys:
        if key not in encoder_state:
            raise ModelFileError(f"authors' checkpoint: encoder.{key} is missing (needed for {kind}); "
                                 f"is this a {kind} model_best.pt?")


class LTDNND3NetBackend(LayerAwareTDNN):
    """L-TDNN D3Net: stem 1 layer x 5 frames, n_blocks SE-D2 blocks of `depth` steps.

    Args:
        input_dim: D of the upstream; num_layers: L + 1 hidden states (use_hidden0: true).
        conv_dim: C; n_blocks: SE-D2 blocks; depth: steps per block (C/depth channels leave
        after each); se_channels: squeeze-excitation width; hidden: layer pooling width (heads
        divide it); embed_dim: E; dropout: of the layer scores and the frame attention;
        eval_std: the frame pooling's context std at test time (unbiased: the authors' code).
    """

    kind = "ltdnn_d3net"
    stem_kernel = (1, 5)

    def __init__(self, input_dim: int, num_layers: int, conv_dim: int = 256, n_blocks: int = 3, depth: int = 4,
                 se_channels: int = 128, hidden: int = 512, heads: int = 8, embed_dim: int = 192,
                 dropout: float = 0.1, eval_std: str = "unbiased"):
        super().__init__()
        self._build_common(input_dim, num_layers, conv_dim, n_blocks, hidden, heads, embed_dim, dropout, eval_std)
        self.blocks = nn.ModuleList(SED2Block(conv_dim, depth, se_channels) for _ in range(n_blocks))
        self._init_as_the_authors()

    @classmethod
    def _authors_block_key(cls, ours: str) -> str:
        # blocks.{b}.steps.{d}.* -> se_d2blocks.{b}.layers.{d}.*; blocks.{b}.se.squeeze|excite.* -> .se.se_attention.1|3.*
        parts = ours.split(".")
        if parts[2] == "steps":
            return ".".join(["se_d2blocks", parts[1], "layers"] + parts[3:])
        return ".".join(["se_d2blocks", parts[1], "se.se_attention", {"squeeze": "1", "excite": "3"}[parts[3]]] + parts[4:])

    @classmethod
    def authors_conf(cls, encoder_state: Dict[str, torch.Tensor]) -> dict:
        _require(encoder_state, cls.kind, "net.in_conv.1.conv.weight", "net.se_d2blocks.0.se.se_attention.1.weight",
                 "l_pool.W1", "l_pool.in_projection.1.weight", "t_pool.out_proj.weight")
        conv_dim, input_dim = encoder_state["net.in_conv.1.conv.weight"].shape[:2]
        n_blocks = len({k.split(".")[2] for k in encoder_state if k.startswith("net.se_d2blocks.")})
        depth = len({k.split(".")[4] for k in encoder_state if k.startswith("net.se_d2blocks.0.layers.")})
        pooling = cls._layer_pooling_conf(encoder_state)
        conf = dict(conv_dim=conv_dim, n_blocks=n_blocks, depth=depth,
                    se_channels=encoder_state["net.se_d2blocks.0.se.se_attention.1.weight"].shape[0],
                    hidden=pooling["hidden"], heads=pooling["heads"], embed_dim=pooling["embed_dim"])
        return dict(input_dim=input_dim, num_layers=pooling["num_layers"], backend_conf=conf)


class LTDNNEcapaBackend(LayerAwareTDNN):
    """L-TDNN ECAPA: stem 5 layers x 3 frames, three SE-Res2 blocks with dilations 2, 3, 4.

    Args as LTDNND3NetBackend; scale: Res2 groups (C divisible by it)."""

    kind = "ltdnn_ecapa"
    stem_kernel = (5, 3)
    DILATIONS = (2, 3, 4)

    def __init__(self, input_dim: int, num_layers: int, conv_dim: int = 256, scale: int = 8,
                 se_channels: int = 128, hidden: int = 512, heads: int = 8, embed_dim: int = 192,
                 dropout: float = 0.1, eval_std: str = "unbiased"):
        super().__init__()
        self._build_common(input_dim, num_layers, conv_dim, len(self.DILATIONS), hidden, heads, embed_dim,
                           dropout, eval_std)
        self.blocks = nn.ModuleList(SERes2Block(conv_dim, d, scale, se_channels) for d in self.DILATIONS)
        self._init_as_the_authors()

    @classmethod
    def _authors_block_key(cls, ours: str) -> str:
        # blocks.{b}.entry|res2.convs.{i}|exit|se.squeeze|se.excite -> block{b+1}.se_res2block.0|1.convs.{i}|2|3.se_attention.1|3
        parts = ours.split(".")
        head = f"block{int(parts[1]) + 1}.se_res2block"
        if parts[2] == "se":
            return ".".join([head, "3.se_attention", {"squeeze": "1", "excite": "3"}[parts[3]]] + parts[4:])
        return ".".join([head, {"entry": "0", "res2": "1", "exit": "2"}[parts[2]]] + parts[3:])

    @classmethod
    def authors_conf(cls, encoder_state: Dict[str, torch.Tensor]) -> dict:
        _require(encoder_state, cls.kind, "net.in_conv.1.conv.weight", "net.block1.se_res2block.1.convs.0.conv.weight",
                 "net.block1.se_res2block.3.se_attention.1.weight", "l_pool.W1", "l_pool.in_projection.1.weight",
                 "t_pool.out_proj.weight")
        conv_dim, input_dim = encoder_state["net.in_conv.1.conv.weight"].shape[:2]
        width = encoder_state["net.block1.se_res2block.1.convs.0.conv.weight"].shape[0]
        pooling = cls._layer_pooling_conf(encoder_state)
        conf = dict(conv_dim=conv_dim, scale=conv_dim // width,
                    se_channels=encoder_state["net.block1.se_res2block.3.se_attention.1.weight"].shape[0],
                    hidden=pooling["hidden"], heads=pooling["heads"], embed_dim=pooling["embed_dim"])
        return dict(input_dim=input_dim, num_layers=pooling["num_layers"], backend_conf=conf)
