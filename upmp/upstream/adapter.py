"""LoRA adapters on an upstream's linear projections (train_conf.upstream_adapter, online training).

    n = add_adapter(upstream, {"kind": "lora", "rank": 64, "alpha": 128.0, "dropout": 0.0,
                               "target_modules": ["q_proj", "v_proj"]})   # the upstream's weights frozen
    state = adapter_state(upstream)      # the adapter's tensors only (what model.pt keeps)
    merge_adapter(upstream)              # W <- W + (alpha / r) B A: a plain upstream again

Each targeted nn.Linear (out x in) keeps its weight W frozen and gains A (r x in) and B (out x r);
its weight becomes W + (alpha / r) B A (Hu et al. 2021, "LoRA"). B starts at zero, so training
starts from the unadapted upstream; A starts as nn.Linear's own init (Kaiming uniform).

Why not the peft library: its LoRA wraps a Linear's forward (x -> W x + s B A x), and WavLM's
attention (S3PRL's WavLM, HuBERT and wav2vec 2.0, which keep fairseq's fast path, and
transformers' WavLM) never calls q_proj / v_proj: it hands their `.weight` to
F.multi_head_attention_forward. peft's adapter there is silently bypassed (the output does not
change, the adapter gets no gradient; peft 0.21.2, target_modules and target_parameters alike).
Here the adapter is a parametrization of the weight itself (torch.nn.utils.parametrize), so
every reader of `.weight` (the module's forward or the fused attention) sees W + s B A.

Dropout (`dropout` > 0) acts on the adapter path's input features: one Bernoulli mask over A's
columns per forward in training mode, scaled by 1 / (1 - p), shared by all frames of the batch
(the weight-space form of LoRA dropout: the fused attention leaves no per-frame input to drop).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Dict, List

import torch
from torch import nn
from torch.nn.utils import parametrize

from upmp.errors import ConfigError

KEY = "train_conf.upstream_adapter"


class LoRAWeight(nn.Module):
    """Parametrization of a Linear's weight: W (out, in) -> W + (alpha / rank) B A."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        out_features, in_features = weight.shape
        self.scaling, self.dropout = alpha / rank, dropout
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight

    def delta(self) -> torch.Tensor:
        """(alpha / rank) B A, (out, in); with dropout in training, over a random subset of A's columns."""
        A = self.lora_A
        if self.training and self.dropout > 0:
            keep = torch.rand(A.shape[1], device=A.device) >= self.dropout
            A = A * keep.to(A.dtype) / (1 - self.dropout)
        return self.scaling * (self.lora_B @ A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


def matches(name: str, pattern: str) -> bool:
    """A module name matches a target when it is the pattern or ends with '.<pattern>' (q_proj,
    self_attn.q_proj), or fits it as a glob over the whole dotted name (*.layers.1[01].*.q_proj)."""
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def target_linears(upstream: nn.Module, targets: List[str], what: str = "the upstream") -> Dict[str, nn.Linear]:
    """{name: nn.Linear} of the upstream's linear modules that the target patterns match; a pattern
    matching none of them is one ConfigError line naming the patterns and some modules that exist."""
    if not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"{KEY}.target_modules {targets}: expected a list of module names (strings)")
    if not targets:
        raise ConfigError(f"{KEY}.target_modules: empty; name the projections to adapt (e.g. [q_proj, v_proj])")
    linears = {n: m for n, m in upstream.named_modules() if isinstance(m, nn.Linear)}
    for pattern in targets:
        if not any(matches(n, pattern) for n in linears):
            ends = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linears))
            example = f" (e.g. {next(iter(linears))})" if linears else ""
            raise ConfigError(f"{KEY}.target_modules {targets}: {pattern!r} matches no linear module of {what}; "
                              f"its linear modules end in: {', '.join(ends[:12]) or 'none'}{example}")
    return {n: m for n, m in linears.items() if any(matches(n, p) for p in targets)}


def add_adapter(upstream: nn.Module, conf: Dict[str, Any], what: str = "the upstream") -> int:
    """Freeze every weight of the upstream and add a LoRA adapter to the targeted linear modules;
    the upstream then trains (Upstream.trainable: gradients flow, train() switches dropout on) but
    only the adapter's parameters need gradients. Returns the adapter's parameter count."""
    if conf["kind"] != "lora":
        raise ConfigError(f"{KEY}.kind {conf['kind']!r}: only lora is implemented")
    chosen = target_linears(upstream, list(conf["target_modules"]), what)
    for p in upstream.parameters():
        p.requires_grad_(False)
    for module in chosen.values():
        lora = LoRAWeight(module.weight, conf["rank"], conf["alpha"], conf["dropout"])
        parametrize.register_parametrization(module, "weight", lora)
    upstream.adapter = dict(conf)
    upstream.trainable = True
    upstream.train(upstream.training)
    return sum(p.numel() for p in upstream.parameters() if p.requires_grad)


def adapters(upstream: nn.Module) -> Dict[str, LoRAWeight]:
    """{module name: its LoRAWeight} of an adapted upstream (empty when it has none)."""
    return {n: m.parametrizations.weight[0] for n, m in upstream.named_modules()
            if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], LoRAWeight)}


def adapter_state(upstream: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter's tensors (CPU copies), keyed as in the upstream's state dict."""
    return {k: v.detach().cpu().clone() for k, v in upstream.state_dict().items()
            if k.endswith((".lora_A", ".lora_B"))}


def load_adapter_state(upstream: nn.Module, state: Dict[str, torch.Tensor], source: str = "the model") -> None:
    """Put adapter_state's tensors back into an upstream given the same adapter (add_adapter)."""
    from upmp.errors import ModelFileError
    mine = adapter_state(upstream)
    if set(mine) != set(state):
        odd = sorted(set(mine) ^ set(state))
        raise ModelFileError(f"{source}: its upstream adapter does not fit this upstream ({len(odd)} tensors differ, "
                             f"e.g. {odd[0]}); use the upstream and checkpoint it was trained on")
    missing, unexpected = upstream.load_state_dict(state, strict=False)
    assert not unexpected, unexpected


def merge_adapter(upstream: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W <- W + (alpha / r) B A, without dropout) and remove it:
    the state dict is then the plain upstream's, and no adapter code is needed to run it."""
    for module in list(upstream.modules()):
        if parametrize.is_parametrized(module, "weight"):
            module.parametrizations.weight.eval()
            with torch.no_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if hasattr(upstream, "adapter"):
        del upstream.adapter
    return upstream


def describe(conf: Dict[str, Any], n_modules: int, n_params: int, n_frozen: int) -> str:
    return (f"upstream adapter: LoRA rank {conf['rank']}, alpha {conf['alpha']:g} on {n_modules} linear modules "
            f"({', '.join(conf['target_modules'])}): {n_params:,} trainable parameters; the upstream's "
            f"{n_frozen:,} weights frozen")
