"""ONNX export of a loaded model (upmp.inference.SpeakerModel), checked with onnxruntime.

Graphs (inputs and outputs by name; B and T / N dynamic):
    backend   stack (B, D, L, T) float32, lengths (B,) int64 frames -> embeddings (B, E)
    full      wavs (B, N) float32 16 kHz, wav_lens (B,) int64 samples -> embeddings (B, E)
              (waveform -> upstream -> backend; GE2E and HF WavLM / HuBERT / wav2vec 2.0)

Embeddings are the raw backend outputs (as in xvector.ark); score them as the package does
(subtract package.json's "mean", length-normalise, dot product).

Lengths are checked: each graph fails (onnxruntime error) rather than answer when the lengths
vector has another batch size than the input, or a length is < 1 or > the padded length (before,
it gave embeddings of the wrong rows, and NaN for length 0). `OnnxEmbedder(path)` runs a graph
with those checks first, as one AudioError line (also a waveform shorter than one frame, NaN):
use it, or check the same before calling onnxruntime yourself.

The legacy TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, opset 17) is used:
it needs only the `onnx` package (the dynamo exporter needs onnxscript). GE2E's front end is
re-expressed for export: the STFT as a 1-D convolution with the windowed DFT basis (ONNX STFT
is complex-valued and not exported from torch.stft) and the volume normalisation vectorised
over the batch; both equal the torch module to float32 rounding (tested).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from upmp.data.layout import btld_to_bdlt, pad_stacks
from upmp.errors import ModelFileError, UpmpError

OPSET = 17


def frame_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    return torch.arange(num_frames, device=lengths.device)[None] < lengths[:, None]


def guard_lengths(lengths: torch.Tensor, rows: torch.Tensor, max_len) -> torch.Tensor:
    """Zeros (B,) to add to the graph's output, computed so that the graph fails instead of answering
    when `lengths` (B,) does not fit its input (`rows`: (B',) from that input, `max_len` its padded
    length). ONNX has no assert: a Gather from a 1-element tensor at index 1 fails, and the index
    is 1 where the numbers of lengths and of inputs differ (onnxruntime answered with the wrong
    rows' embeddings) or a length is < 1 (NaN) or > max_len. The counts come from ones_like, so
    they stay dynamic in the trace; adding zeros is exact, and keeps the check in the graph."""
    mismatch = (torch.ones_like(lengths).sum() != torch.ones_like(rows, dtype=lengths.dtype).sum()).long()
    bad = ((lengths < 1) | (lengths > max_len)).long() + mismatch
    return torch.zeros(1, device=lengths.device)[bad.clamp(max=1)]


class BackendGraph(nn.Module):
    """(stack (B, D, L, T), lengths (B,)) -> (B, E): the frame mask is built inside the graph."""

    def __init__(self, backend: nn.Module):
        super().__init__()
        self.backend = backend

    def forward(self, stack: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        guard = guard_lengths(lengths, stack[:, 0, 0, 0], stack.shape[3])
        return self.backend(stack, frame_mask(lengths, stack.shape[3])) + guard[:, None]


class GE2EFrontEnd(nn.Module):
    """GE2EUpstream.extract in exportable form: (wavs (B, N), wav_lens (B,)) -> (stack (B, 256, 4, T), lengths)."""

    def __init__(self, upstream):
        super().__init__()
        from upmp.upstream.ge2e import HIDDEN, N_MELS, TARGET_DBFS
        self.hidden, self.n_mels, self.target_dbfs = HIDDEN, N_MELS, TARGET_DBFS
        spec = upstream.mel.spectrogram
        n_fft, self.hop = spec.n_fft, spec.hop_length
        window = spec.window.double()
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None] / n_fft
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window[None]   # (2F, n_fft)
        self.register_buffer("dft", basis.float()[:, None, :])                     # conv1d weight (2F, 1, n_fft)
        self.register_buffer("fb", upstream.mel.mel_scale.fb.clone())              # (F, n_mels)
        self.pad = n_fft // 2
        self.lstms = upstream.lstms

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        wavs = wavs * frame_mask(wav_lens, wavs.shape[1])
        power = (wavs * wavs).sum(dim=1) / wav_lens.to(wavs.dtype)
        rms_db = 10 * torch.log10(power.clamp(min=1e-20))
        gain_db = (self.target_dbfs - rms_db).clamp(min=0.0)
        wavs = wavs * torch.pow(10.0, gain_db / 20)[:, None]
        x = nn.functional.pad(wavs[:, None], (self.pad, self.pad))                 # centred frames, zero padding
        spec = nn.functional.conv1d(x, self.dft, stride=self.hop)                   # (B, 2F, T)
        re, im = spec.chunk(2, dim=1)
        mels = torch.matmul((re * re + im * im).transpose(1, 2), self.fb)           # (B, T, n_mels) power mel
        outs = [nn.functional.pad(torch.log(mels + 1e-6), (0, self.hidden - self.n_mels))]
        h = mels
        for lstm in self.lstms:
            h, _ = lstm(h)
            outs.append(h)
        stack = torch.stack(outs, dim=2)                                            # (B, T, L, D)
        return btld_to_bdlt(stack), wav_lens // self.hop + 1


class HFFrontEnd(nn.Module):
    """HFUpstream.extract for export (the same calls; transformers models trace)."""

    def __init__(self, upstream):
        super().__init__()
        self.model, self.use_mask = upstream.model, upstream.use_mask

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = frame_mask(wav_lens, wavs.shape[1]).long()
        out = self.model(wavs * mask, attention_mask=mask if self.use_mask else None, output_hidden_states=True)
        stack = torch.stack(out.hidden_states, dim=2)
        lengths = self.model._get_feat_extract_output_lengths(wav_lens).long()
        return btld_to_bdlt(stack), lengths


class FullGraph(nn.Module):
    """(wavs (B, N), wav_lens (B,)) -> (B, E): exportable front end, then the backend."""

    def __init__(self, front: nn.Module, backend: nn.Module):
        super().__init__()
        self.front, self.backend = front, backend

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        guard = guard_lengths(wav_lens, wavs[:, 0], wavs.shape[1])
        stack, lengths = self.front(wavs, wav_lens)
        frames_guard = guard_lengths(lengths, stack[:, 0, 0, 0], stack.shape[3])  # too short for one frame
        return self.backend(stack, frame_mask(lengths, stack.shape[3])) + (guard + frames_guard)[:, None]


def front_end(upstream) -> nn.Module:
    """The exportable form of an upstream, or ModelFileError when it has none."""
    from upmp.upstream.ge2e import GE2EUpstream
    from upmp.upstream.hf import HFUpstream
    if isinstance(upstream, GE2EUpstream):
        return GE2EFrontEnd(upstream)
    if isinstance(upstream, HFUpstream):
        return HFFrontEnd(upstream)
    raise ModelFileError(f"the {type(upstream).__name__} upstream has no exportable form (GE2E and hf:<dir> do); "
                         "export the backend graph (--graph backend) and run the upstream in torch")


def build_graph(model, graph: str) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """The module to export and example inputs (a padded batch of 2)."""
    if graph == "backend":
        D, L = model.meta.dim, model.meta.num_layers
        g = BackendGraph(model.backend)
        example = {"stack": torch.randn(2, D, L, 50), "lengths": torch.tensor([50, 31])}
    elif graph == "full":
        g = FullGraph(front_end(model.upstream), model.backend)
        example = {"wavs": 0.1 * torch.randn(2, 16000), "wav_lens": torch.tensor([16000, 11000])}
    else:
        raise ValueError(f"unknown graph {graph!r} (backend, full)")
    return g.eval(), example


def export_onnx(model, path: str, graph: str = "backend") -> None:
    """Write the ONNX graph of a SpeakerModel (inputs named as in the module docstring)."""
    import importlib.util
    import warnings
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise UpmpError(f"ONNX export needs the {module} package (pinned in tools/requirements.txt; "
                            "bash tools/install.sh installs it)")
    g, example = build_graph(model, graph)
    names = list(example)
    dynamic = {names[0]: {0: "batch", (3 if graph == "backend" else 1): "time"}, names[1]: {0: "batch"},
               "embeddings": {0: "batch"}}
    from upmp.fileio import atomic_write_bytes
    import io
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(g, tuple(example.values()), buf, dynamo=False, input_names=names,
                          output_names=["embeddings"], dynamic_axes=dynamic, opset_version=OPSET)
    atomic_write_bytes(path, buf.getvalue())


def onnx_session(path: str, num_threads: int = 0):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if num_threads > 0:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    """An exported graph run by onnxruntime, its inputs checked first: one AudioError line for
    lengths of another batch size than the input, a length < 1 or > the padded length, a waveform
    too short for one frame, non-finite values or a wrong shape (the graph itself fails on the
    first two, with onnxruntime's message).

        emb = OnnxEmbedder("model.wav.onnx")(wavs, wav_lens)     # (B, N) float32, (B,) int64 -> (B, E)
        emb = OnnxEmbedder("model.wav.onnx").embed([w1, w2])     # list of (N_i,) 16 kHz -> (B, E)
    """

    def __init__(self, path: str, num_threads: int = 0):
        self.path = str(path)
        self.session = onnx_session(self.path, num_threads)
        names = tuple(i.name for i in self.session.get_inputs())
        graphs = {("stack", "lengths"): "backend", ("wavs", "wav_lens"): "full"}
        if names not in graphs:
            raise ModelFileError(f"{self.path}: inputs {names} are not those of an upmp export "
                                 "(stack, lengths or wavs, wav_lens)")
        self.names, self.graph = names, graphs[names]

    def check(self, x: np.ndarray, lengths: np.ndarray) -> None:
        from upmp.data.audio import MIN_SAMPLES, check_finite
        from upmp.errors import AudioError
        x, lengths = np.asarray(x), np.asarray(lengths)
        shape = "(B, D, L, T)" if self.graph == "backend" else "(B, N)"
        if x.ndim != len(shape.split(",")) or x.dtype != np.float32:
            raise AudioError(f"{self.path}: {self.names[0]} must be float32 {shape}, got {x.dtype} {x.shape}")
        if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
            raise AudioError(f"{self.path}: {self.names[1]} must be int64 (B,), got {lengths.dtype} {lengths.shape}")
        if len(lengths) != len(x):
            raise AudioError(f"{self.path}: {len(lengths)} {self.names[1]} for a batch of {len(x)} inputs; "
                             "give one length per row")
        low = 1 if self.graph == "backend" else MIN_SAMPLES
        unit = "frames" if self.graph == "backend" else f"samples (one frame needs {MIN_SAMPLES})"
        bad = np.flatnonzero((lengths < low) | (lengths > x.shape[-1]))
        if bad.size:
            i = int(bad[0])
            raise AudioError(f"{self.path}: {self.names[1]}[{i}] = {int(lengths[i])} {unit}; each must be "
                             f"{low}..{x.shape[-1]} (the padded length)")
        check_finite(x, f"{self.path}: {self.names[0]}", "replace those values")

    def __call__(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(B, ...) input, (B,) lengths -> (B, E) embeddings, not normalised."""
        self.check(x, lengths)
        feed = {self.names[0]: np.asarray(x), self.names[1]: np.asarray(lengths).astype(np.int64)}
        return self.session.run(None, feed)[0]

    def embed(self, items) -> np.ndarray:
        """List of (N_i,) waveforms (full graph) or (L, T_i, D) layer stacks (backend graph) -> (B, E)."""
        return self(*(pad_stacks(items) if self.graph == "backend" else padded_waveforms(items)))


def padded_waveforms(wavs) -> Tuple[np.ndarray, np.ndarray]:
    """List of (N_i,) -> (B, max N) zero-padded float32, (B,) int64 lengths."""
    lens = np.array([len(w) for w in wavs], dtype=np.int64)
    x = np.zeros((len(wavs), lens.max()), dtype=np.float32)
    for i, w in enumerate(wavs):
        x[i, :len(w)] = w
    return x, lens


def check_onnx(model, path: str, graph: str, wavs) -> float:
    """Largest |onnxruntime - torch| over the embeddings of a zero-padded batch of waveforms:
    against the torch graph on the same batch, and, where padding is neutral (the backend graph
    and GE2E's waveform graph with a padding-invariant backend), against torch embedding each
    utterance alone as stage 3 does (SpeakerModel.embed_raw). Each utterance alone (a batch of
    one, no padding) is also compared with embed_raw, whatever the backend and upstream: the one
    check of the graph's own masking where a padded batch is not neutral (superb_ecapa, xvector)."""
    from upmp.upstream.ge2e import GE2EUpstream
    sess = onnx_session(path)
    if graph == "backend":
        x, lens = pad_stacks([model.layer_stack(w) for w in wavs])
        got = sess.run(None, {"stack": x, "lengths": lens})[0]
    else:
        x, lens = padded_waveforms(wavs)
        got = sess.run(None, {"wavs": x, "wav_lens": lens})[0]
    g, _ = build_graph(model, graph)
    with torch.no_grad():
        batch = g(torch.from_numpy(x), torch.from_numpy(lens)).numpy()
    diff = float(np.abs(got - batch).max())
    stage3 = model.embed_raw(list(wavs))
    if model.backend.padding_invariant and (graph == "backend" or isinstance(model.upstream, GE2EUpstream)):
        diff = max(diff, float(np.abs(got - stage3).max()))
    names = [i.name for i in sess.get_inputs()]
    for i, n in enumerate(lens):  # time is the last axis of both graphs' inputs
        alone = sess.run(None, {names[0]: np.ascontiguousarray(x[i:i + 1, ..., :n]), names[1]: lens[i:i + 1]})[0]
        diff = max(diff, float(np.abs(alone[0] - stage3[i]).max()))
    return diff
