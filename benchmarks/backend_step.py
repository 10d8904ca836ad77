"""Backend training step (forward + backward with the AAM head): ours vs a straightforward formulation.

    python benchmarks/backend_step.py [--backends upmp ltdnn_d3net ltdnn_ecapa lap superb_ecapa xvector] [--batch 8 32]
        [--frames 150] [--repeats 3] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--small]
    python benchmarks/backend_step.py --counts [--backends ...]   (parameters and FLOPs per 3 s crop)

At paper size (D 768, 12 Transformer layers, 150 frames = 3 s at 50 fps, 1,211 speakers)
each backend's step is timed against a reference module written below, with the
same weights (copied across), that does the same maths the straightforward way:

- upmp: the layer-wise VAD as the paper's reference code does it, one SUPERB
  weighted sum per output layer in a Python loop over a (B, C, T, L) layout, a
  per-layer Linear score for each, stacked; the rest as plain module code
  (masks multiplied in everywhere, amax, separate residual add).
- lap: the follow-up's formulation: (B*T, heads, d, L) rearrangement and
  per-head matmuls for the layer squeeze-excitation.
- superb_ecapa: the SUPERB weighted sum as broadcast-multiply-and-sum over a
  (B, D, T, L) layout, then the same ECAPA-TDNN.
- ltdnn_d3net, ltdnn_ecapa: the authors' structure written plainly (their split / concat
  loops), the frame mask multiplied in before every convolution whether or not a frame is
  padded, out-of-place ReLUs, and the plain layer pooling above (amax of the full product);
  ours skips the masks of an unpadded batch, runs the ReLUs in place and keeps only the
  winning layer for the layer pooling's backward.
- xvector: no layer mixing, so the reference is the same code (an A/A pair:
  its ratio shows the noise floor of the measurement).

Ours and the reference alternate within each repeat (medians reported). Peak
memory: on CUDA torch.cuda.max_memory_allocated; on CPU the peak resident set
of a fresh subprocess per variant during its second step, above its resident
set before it (Linux: VmHWM after resetting it through /proc/self/clear_refs,
minus VmRSS; glibc's mmap threshold fixed so freed blocks leave the resident set).
"saved" is exact on any device: the distinct storages autograd keeps for the backward pass (activations; parameters excluded).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Dict, List, Optional

import torch
from torch import nn

from upmp.backends import BACKENDS
from upmp.backends.pooling import AttentiveStatisticsPooling
from upmp.losses import AAMSoftmax

PAPER = dict(input_dim=768, num_layers=12, frames=150, speakers=1211)
SMALL = dict(input_dim=32, num_layers=5, frames=40, speakers=20)
SMALL_CONF = {"upmp": dict(conv_dim=8, embed_dim=16), "lap": dict(heads=4, channels=16, embed_dim=16),
              "superb_ecapa": dict(ndim=16, output_size=24, embed_dim=16),
              "xvector": dict(ndim=16, output_size=24, embed_dim=16),
              "ltdnn_d3net": dict(conv_dim=8, se_channels=4, hidden=16, heads=4, embed_dim=16),
              "ltdnn_ecapa": dict(conv_dim=8, scale=4, se_channels=4, hidden=16, heads=4, embed_dim=16)}
# the hidden states each backend sees in the recipes' configs: all but upmp keep hidden state 0
EXTRA_LAYERS = {"upmp": 0, "lap": 1, "superb_ecapa": 1, "xvector": 1, "ltdnn_d3net": 1, "ltdnn_ecapa": 1}


# ---------------------------------------------------------------- reference UPMP
class SuperbWeightedSum(nn.Module):
    """(B, C, T, L) -> (B, C, T): softmax-weighted sum over the last axis."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, x):
        return (x * torch.softmax(self.logits, dim=-1)).sum(dim=-1)


class RefVAD(nn.Module):
    def __init__(self, channels: int, num_layers: int):
        super().__init__()
        self.superb = nn.ModuleList(SuperbWeightedSum(num_layers) for _ in range(num_layers))
        self.score = nn.ModuleList(nn.Linear(channels, 1) for _ in range(num_layers))

    def forward(self, x, mask):
        feats = x.permute(0, 1, 3, 2)  # (B, C, T, L), the reference code's layout
        outs = []
        for superb, score in zip(self.superb, self.score):
            h = superb(feats)  # (B, C, T)
            logit = score(h.transpose(1, 2)).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
            outs.append(h * torch.sigmoid(logit).unsqueeze(1))
        return torch.stack(outs, dim=2)  # (B, C, L, T)


class RefChannelAttention(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()

        def mlp():
            return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.BatchNorm2d(hidden),
                                 nn.Conv2d(hidden, channels, 1))
        self.mlp_avg, self.mlp_max = mlp(), mlp()

    def forward(self, x, mask):
        m = mask[:, None, None, :].float()
        count = (m.sum(dim=3, keepdim=True) * x.shape[2]).clamp(min=1.0)
        avg = (x * m).sum(dim=(2, 3), keepdim=True) / count
        mx = x.masked_fill(m == 0, float("-inf")).amax(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.mlp_avg(avg) + self.mlp_max(mx))


class RefMultiDilated(nn.Module):
    def __init__(self, channels: int, dilations):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                                    nn.Conv2d(channels, channels, 3, dilation=d, padding=d))
                                      for d in dilations)

    def forward(self, inputs, m):
        out = 0
        for branch, y in zip(self.branches, inputs):
            out = out + branch[2](branch[:2](y) * m)
        return out


class RefDenseBlock(nn.Module):
    def __init__(self, conv_dim: int, dilations=(1, 2, 4)):
        super().__init__()
        self.entry = nn.Conv2d(4 * conv_dim, conv_dim, 1)
        self.layers = nn.ModuleList(RefMultiDilated(conv_dim, dilations[:k]) for k in range(1, len(dilations) + 1))
        self.attention = RefChannelAttention(conv_dim * (len(dilations) + 1), conv_dim)

    def forward(self, x, mask):
        m = mask[:, None, None, :].float()
        ys = [self.entry(x)]
        for layer in self.layers:
            ys.append(layer(ys, m))
        return x + self.attention(torch.cat(ys, dim=1), mask)


class RefLayerPooling(nn.Module):
    """Layer attentive pooling, per-head MLP applied to the mean and the max branch separately."""

    def __init__(self, in_channels, channels, num_layers, heads, dropout=0.1, out_channels=None, bias=False):
        super().__init__()
        self.heads = heads
        hidden = max(1, num_layers // 2)
        self.norm = nn.BatchNorm2d(in_channels)
        self.proj = nn.Conv2d(in_channels, channels, 1, bias=bias)
        self.w1 = nn.Parameter(torch.zeros(heads, num_layers, hidden))
        self.b1 = nn.Parameter(torch.zeros(heads, hidden))
        self.w2 = nn.Parameter(torch.zeros(heads, hidden, num_layers))
        self.b2 = nn.Parameter(torch.zeros(heads, num_layers))
        self.dropout = nn.Dropout(dropout)
        out_channels = out_channels or channels
        self.out = nn.Sequential(nn.Conv1d(channels, out_channels, 1, bias=bias), nn.BatchNorm1d(out_channels))

    def mlp(self, z):
        hidden = torch.relu(torch.einsum("bhlt,hlk->bhkt", z, self.w1) + self.b1[None, :, :, None])
        return torch.einsum("bhkt,hkl->bhlt", hidden, self.w2) + self.b2[None, :, :, None]

    def forward(self, x, mask):
        x = self.proj(self.norm(x))
        B, C, L, T = x.shape
        xh = x.view(B, self.heads, C // self.heads, L, T)
        score = self.dropout(torch.sigmoid(self.mlp(xh.mean(dim=2)) + self.mlp(xh.amax(dim=2))))
        return self.out((xh * score.unsqueeze(2)).view(B, C, L, T).amax(dim=2))


class ReferenceUPMP(nn.Module):
    def __init__(self, input_dim, num_layers, conv_dim=128, n_blocks=1, heads=4, embed_dim=192, dropout=0.1):
        super().__init__()
        width = 4 * conv_dim
        self.projection = nn.Sequential(nn.Conv2d(input_dim, width, 1), nn.BatchNorm2d(width))
        self.vads = nn.ModuleList(RefVAD(width, num_layers) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(RefDenseBlock(conv_dim) for _ in range(n_blocks))
        self.layer_pooling = RefLayerPooling(width * n_blocks, width, num_layers, heads, dropout)
        self.frame_pooling = AttentiveStatisticsPooling(width, embed_dim, dropout)

    def forward(self, x, mask):
        x = self.projection(x)
        outputs = []
        for vad, block in zip(self.vads, self.blocks):
            x = block(vad(x, mask), mask)
            outputs.append(x)
        return self.frame_pooling(self.layer_pooling(torch.cat(outputs, dim=1), mask), mask)

    def load_from(self, ours: nn.Module) -> None:
        """Copy the weights of an upmp.backends.upmp.UPMPBackend (the VAD's mixing rows and
        frame scores become the per-layer SUPERB modules and Linear scores)."""
        state = {}
        for key, value in ours.state_dict().items():
            if key.startswith("vads."):
                _, n, name = key.split(".")
                for i in range(value.shape[0]):
                    if name == "mix_logits":
                        state[f"vads.{n}.superb.{i}.logits"] = value[i]
                    elif name == "frame_weight":
                        state[f"vads.{n}.score.{i}.weight"] = value[i:i + 1]
                    else:
                        state[f"vads.{n}.score.{i}.bias"] = value[i:i + 1]
            else:
                state[key] = value
        self.load_state_dict(state)


# ---------------------------------------------------------------- reference LAP
class ReferenceLAP(nn.Module):
    """LAP + ASTP the follow-up's way: (B, D, T, L) layout, (B*T, heads, d, L) per-head matmuls."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        lp = ours.layer_pooling
        self.heads = lp.heads
        self.norm, self.proj, self.out = copy.deepcopy(lp.norm), copy.deepcopy(lp.proj), copy.deepcopy(lp.out)
        self.w1, self.w2 = nn.Parameter(lp.w1.detach().clone()), nn.Parameter(lp.w2.detach().clone())
        self.b1 = nn.Parameter(lp.b1.detach().clone().unsqueeze(1))  # (h, 1, k)
        self.b2 = nn.Parameter(lp.b2.detach().clone().unsqueeze(1))  # (h, 1, L)
        self.dropout = nn.Dropout(lp.dropout.p)
        self.frame_pooling = copy.deepcopy(ours.frame_pooling)

    def squeeze_excite(self, z):  # (BT, h, 1, L)
        return torch.matmul(torch.relu(torch.matmul(z, self.w1) + self.b1), self.w2) + self.b2

    def forward(self, x, mask):
        x = self.proj(self.norm(x.transpose(2, 3)))  # (B, D, T, L)
        B, D, T, L = x.shape
        x = x.reshape(B, self.heads, D // self.heads, T, L).permute(0, 3, 1, 2, 4).reshape(B * T, self.heads, -1, L)
        s = torch.sigmoid(self.squeeze_excite(x.mean(dim=2, keepdim=True))
                          + self.squeeze_excite(x.amax(dim=2, keepdim=True)))
        x = (x * self.dropout(s)).amax(dim=-1)  # (BT, h, d)
        x = x.view(B, T, D).transpose(1, 2)
        return self.frame_pooling(self.out(x), mask)


# ---------------------------------------------------------------- reference L-TDNN (D3Net, ECAPA)
class ReferenceLTDNN(nn.Module):
    """Either L-TDNN variant the straightforward way, with the weights of ours (deep copies of its
    convolutions and batch norms, used through plain functional code)."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        self.kind = ours.kind
        self.stem_norm, self.stem, self.blocks, self.fusion = (copy.deepcopy(m) for m in (
            ours.stem_norm, ours.stem, ours.blocks, ours.fusion))
        lp = ours.layer_pooling
        self.layer_pooling = RefLayerPooling(lp.norm.num_features, lp.proj.out_channels, lp.w1.shape[1], lp.heads,
                                             lp.dropout.p)
        self.layer_pooling.load_state_dict(lp.state_dict())
        self.frame_pooling = copy.deepcopy(ours.frame_pooling)

    @staticmethod
    def cbr(unit, x, m):
        return unit.bn(torch.relu(unit.conv(x * m)))

    @staticmethod
    def se(se, x, m):
        avg = (x * m).sum(dim=(2, 3), keepdim=True) / (m.sum(dim=3, keepdim=True) * x.shape[2])
        return x * torch.sigmoid(se.excite(torch.relu(se.squeeze(avg))))

    def d3_block(self, block, x, m):
        outputs = []
        for d, step in enumerate(block.steps):
            x = x + self.cbr(step, x, m)
            if d + 1 < len(block.steps):
                x, out = torch.split(x, [block.widths[d + 1], x.shape[1] - block.widths[d + 1]], dim=1)
                outputs.append(out)
        return self.se(block.se, torch.cat(outputs + [x], dim=1), m)

    def res2_block(self, block, x, m):
        parts = torch.split(self.cbr(block.entry, x, m), block.res2.width, dim=1)
        outputs, y = [], None
        for i, unit in enumerate(block.res2.convs):
            y = self.cbr(unit, parts[i] if i == 0 else y + parts[i], m)
            outputs.append(y)
        y = self.cbr(block.exit, torch.cat(outputs + [parts[-1]], dim=1), m)
        return x + self.se(block.se, y, m)

    def forward(self, x, mask):
        m = mask[:, None, None, :].float()
        x = self.cbr(self.stem, self.stem_norm(x), m)
        outputs = []
        for block in self.blocks:
            x = (self.d3_block if self.kind == "ltdnn_d3net" else self.res2_block)(block, x, m)
            outputs.append(x)
        x = torch.relu(self.fusion(torch.cat(outputs, dim=1) * m))
        return self.frame_pooling(self.layer_pooling(x, mask), mask)


# ---------------------------------------------------------------- reference SUPERB + ECAPA, x-vector
class ReferenceSuperbEcapa(nn.Module):
    def __init__(self, ours: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(ours)

    def forward(self, x, mask):
        feats = (x.permute(0, 1, 3, 2) * torch.softmax(self.inner.layer_logits, dim=0)).sum(dim=-1)  # (B, D, T)
        frames = self.inner.encoder(feats.transpose(1, 2))
        return self.inner.projector(self.inner.pooling(frames, mask.sum(dim=1)))


class SameCode(nn.Module):
    def __init__(self, ours: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(ours)

    def forward(self, x, mask):
        return self.inner(x, mask)


def reference_of(name: str, ours: nn.Module) -> nn.Module:
    """The benchmark's reference formulation of backend `name`, with the weights of `ours`."""
    if name == "upmp":
        ref = ReferenceUPMP(ours.projection[0].in_channels, ours.vads[0].mix_logits.shape[0],
                            conv_dim=ours.blocks[0].entry.out_channels, n_blocks=len(ours.blocks),
                            heads=ours.layer_pooling.heads, embed_dim=ours.embed_dim,
                            dropout=ours.layer_pooling.dropout.p)
        ref.load_from(ours)
        return ref
    if name == "lap":
        return ReferenceLAP(ours)
    if name == "superb_ecapa":
        return ReferenceSuperbEcapa(ours)
    if name in ("ltdnn_d3net", "ltdnn_ecapa"):
        return ReferenceLTDNN(ours)
    if name == "xvector":
        return SameCode(ours)
    raise ValueError(f"no reference formulation for backend {name!r}")


def build(name: str, size: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conf = SMALL_CONF[name] if size is SMALL else {}
    return BACKENDS[name](input_dim=size["input_dim"], num_layers=size["num_layers"] + EXTRA_LAYERS[name], **conf)


# ---------------------------------------------------------------- measurement
def autocast(device: str, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def make_step(model: nn.Module, head: nn.Module, x, mask, labels, device: str, dtype: str):
    scaler = torch.amp.GradScaler(device) if dtype == "fp16" else None

    def step():
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss, _ = head(model(x, mask).float(), labels)
        (scaler.scale(loss) if scaler else loss).backward()
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def inputs(name: str, size: dict, batch: int, device: str):
    g = torch.Generator().manual_seed(1)
    L = size["num_layers"] + EXTRA_LAYERS[name]
    x = torch.randn(batch, size["input_dim"], L, size["frames"], generator=g).to(device)
    mask = torch.ones(batch, size["frames"], dtype=torch.bool, device=device)
    labels = torch.randint(0, size["speakers"], (batch,), generator=g).to(device)
    return x, mask, labels


def variant_models(name: str, size: dict, device: str):
    ours = build(name, size).to(device).train()
    ref = reference_of(name, ours).to(device).train()
    torch.manual_seed(2)
    head = AAMSoftmax(ours.embed_dim, size["speakers"]).to(device)
    return {"ours": ours, "reference": ref}, head


def time_pair(name: str, size: dict, batch: int, repeats: int, device: str, dtype: str) -> Dict[str, List[float]]:
    models, head = variant_models(name, size, device)
    x, mask, labels = inputs(name, size, batch, device)
    steps = {k: make_step(m, head, x, mask, labels, device, dtype) for k, m in models.items()}
    times: Dict[str, List[float]] = {k: [] for k in steps}
    peak: Dict[str, Optional[float]] = {}
    saved = {k: saved_for_backward_mb(m, head, x, mask, labels, device, dtype) for k, m in models.items()}
    for k, step in steps.items():  # warm-up (and CUDA peak memory of one step)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        step()
        peak[k] = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else None
    for _ in range(repeats):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return {"times": times, "peak_mb": peak, "saved_mb": saved}


def saved_for_backward_mb(model: nn.Module, head: nn.Module, x, mask, labels, device: str, dtype: str) -> float:
    """MiB of distinct tensor storages autograd keeps for the backward pass of one step
    (parameters excluded): the activation memory, deterministic on any device."""
    params = {p.untyped_storage().data_ptr() for p in list(model.parameters()) + list(head.parameters())}
    seen: Dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        loss, _ = head(model(x, mask).float(), labels)
    total = sum(seen.values())
    del loss
    return total / 2**20


def cpu_peak_mb(name: str, size_name: str, batch: int, variant: str, dtype: str) -> float:
    """Peak resident memory (MiB) of one step above the resident set before it, in a fresh process."""
    code = ("import json, sys; from benchmarks.backend_step import _peak_child; "
            f"print(json.dumps(_peak_child({name!r}, {size_name!r}, {batch}, {variant!r}, {dtype!r})))")
    # a fixed mmap threshold: glibc then returns every large block on free, so the resident
    # set follows the live tensors instead of keeping freed heap from the first step
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _peak_child(name: str, size_name: str, batch: int, variant: str, dtype: str) -> float:
    size = PAPER if size_name == "paper" else SMALL
    models, head = variant_models(name, size, "cpu")
    x, mask, labels = inputs(name, size, batch, "cpu")
    step = make_step(models[variant], head, x, mask, labels, "cpu", dtype)
    step()  # first step allocates the gradients, which persist
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set (VmHWM) to the current one
    before = _status_kb("VmRSS")
    step()
    return max(0.0, (_status_kb("VmHWM") - before) / 1024)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def count_table(backends, frames: int = 149) -> List[dict]:
    """Trainable parameters and forward FLOPs of one 3 s crop (149 frames, batch 1, eval mode;
    torch.utils.flop_counter: 2 per multiply-add of convolutions and matrix products) at Base
    (D 768, 13 hidden states) and Large (D 1024, 25), each backend with its paper defaults."""
    from torch.utils.flop_counter import FlopCounterMode
    rows = []
    for name in backends:
        row = {"backend": name}
        for size, (D, hidden_states) in (("base", (768, 13)), ("large", (1024, 25))):
            L = hidden_states - 1 + EXTRA_LAYERS.get(name, 1)
            torch.manual_seed(0)
            m = BACKENDS[name](input_dim=D, num_layers=L).eval()
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                m(torch.randn(1, D, L, frames), torch.ones(1, frames, dtype=torch.bool))
            row[f"{size}_params"] = sum(p.numel() for p in m.parameters() if p.requires_grad)
            row[f"{size}_gflops"] = counter.get_total_flops() / 1e9
        rows.append(row)
    return rows


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["upmp", "ltdnn_d3net", "ltdnn_ecapa", "lap", "superb_ecapa", "xvector"],
                   choices=sorted(BACKENDS), help="timing: those with a reference formulation here "
                   f"({', '.join(sorted(EXTRA_LAYERS))}); --counts: any")
    p.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no_memory", action="store_true", help="skip the CPU peak-memory subprocesses")
    p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, not a benchmark)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--counts", action="store_true",
                   help="only print trainable parameters and forward GFLOPs per 3 s crop at Base and Large")
    args = p.parse_args(argv)
    if args.counts:
        print(f"{'backend':13s} {'Base params':>12s} {'Base GFLOPs':>11s} {'Large params':>12s} {'Large GFLOPs':>12s}")
        for r in count_table(args.backends):
            print(f"{r['backend']:13s} {r['base_params']:12,d} {r['base_gflops']:11.2f} "
                  f"{r['large_params']:12,d} {r['large_gflops']:12.2f}", flush=True)
        return
    if set(args.backends) - set(EXTRA_LAYERS):
        p.error(f"no reference formulation to time against for {', '.join(sorted(set(args.backends) - set(EXTRA_LAYERS)))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    size, size_name = (SMALL, "small") if args.small else (PAPER, "paper")
    print(f"# backend step (forward + backward, AAM head), {args.dtype}, {args.device}: {machine(args.device)}; "
          f"D {size['input_dim']}, {size['num_layers']} layers, {size['frames']} frames, "
          f"median of {args.repeats}")
    print("# MiB: peak memory of a step (CUDA allocator, or CPU resident set); saved: activations kept for backward")
    print(f"{'backend':13s} {'batch':>5s} {'ours s':>8s} {'ref s':>8s} {'ref/ours':>8s} "
          f"{'ours MiB':>9s} {'ref MiB':>9s} {'ours saved':>10s} {'ref saved':>10s}")
    rows = []
    for name in args.backends:
        for batch in args.batch:
            res = time_pair(name, size, batch, args.repeats, args.device, args.dtype)
            med = {k: statistics.median(v) for k, v in res["times"].items()}
            peak = res["peak_mb"]
            if args.device != "cuda" and not args.no_memory:
                peak = {k: cpu_peak_mb(name, size_name, batch, k, args.dtype) for k in ("ours", "reference")}
            mem = {k: (f"{v:9.0f}" if v is not None else f"{'-':>9s}") for k, v in peak.items()}
            print(f"{name:13s} {batch:5d} {med['ours']:8.3f} {med['reference']:8.3f} "
                  f"{med['reference'] / med['ours']:7.2f}x {mem['ours']} {mem['reference']} "
                  f"{res['saved_mb']['ours']:10.0f} {res['saved_mb']['reference']:10.0f}", flush=True)
            rows.append(dict(backend=name, batch=batch, dtype=args.dtype, device=args.device,
                             ours_s=med["ours"], reference_s=med["reference"], ratio=med["reference"] / med["ours"],
                             ours_times=res["times"]["ours"], reference_times=res["times"]["reference"],
                             ours_peak_mb=peak["ours"], reference_peak_mb=peak["reference"],
                             ours_saved_mb=res["saved_mb"]["ours"], reference_saved_mb=res["saved_mb"]["reference"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(args.device), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
