"""GE2E speaker encoder as a multi-layer upstream, with the pretrained weights shipped in
the `resemblyzer` wheel (resemblyzer/pretrained.pt, Apache-2.0): a 3-layer LSTM with 256
units over 40-band mel frames (25 ms windows, 10 ms hop, 16 kHz), trained for speaker
verification. Only the weights file is used; the front end and the layers are ours.

Layer stack (L = 4, D = 256, 10 ms frames):
  hidden state 0: log(mel + 1e-6), 40 channels zero-padded to 256 (a fixed, parameter-free
                  embedding into the stack's width; backends see one D)
  hidden states 1-3: the outputs of LSTM layers 1, 2, 3
The LSTM reads the power mel spectrogram (librosa's defaults: Slaney mel scale and
normalisation, centred frames with zero padding) of the waveform normalised to -30 dBFS
(louder only), as the package's model was trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from upmp.data.audio import SAMPLE_RATE
from upmp.data.layout import btld_to_bdlt
from upmp.errors import UpstreamError
from upmp.safe_load import load_torch_data, resave_hint
from upmp.upstream.base import Upstream

N_MELS, HIDDEN, NUM_LSTM_LAYERS = 40, 256, 3
TARGET_DBFS = -30.0


def default_weights_path() -> Path:
    """resemblyzer/pretrained.pt of the installed package (located without importing it)."""
    import importlib.util
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the resemblyzer package is not installed (pip install resemblyzer); "
                                "its wheel carries the GE2E weights")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GE2E weights not found in the resemblyzer package")
    return path


class GE2EUpstream(Upstream):
    """forward(wavs (B, N), wav_lens (B,)) -> (stack (B, 256, 4, T), lengths (B,)); 10 ms frames."""

    num_layers = NUM_LSTM_LAYERS + 1
    dim = HIDDEN
    frame_shift = 0.01

    def __init__(self, weights: Optional[str] = None):
        super().__init__()
        import torchaudio
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, n_mels=N_MELS,
            power=2.0, center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")
        self.lstms = nn.ModuleList(nn.LSTM(N_MELS if k == 0 else HIDDEN, HIDDEN, batch_first=True)
                                   for k in range(NUM_LSTM_LAYERS))
        self.linear = nn.Linear(HIDDEN, HIDDEN)  # the package's embedding layer (for checks)
        path = Path(weights) if weights else default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"GE2E weights not found: {path}")
        expected = "GE2E weights (resemblyzer's pretrained.pt: a dict with model_state)"
        state = load_torch_data(path, expected, resave_hint(path), UpstreamError)  # tensors and plain data only
        if not isinstance(state, dict) or not isinstance(state.get("model_state"), dict):
            raise UpstreamError(f"{path}: no model_state dict; expected {expected}")
        state = state["model_state"]
        for k, lstm in enumerate(self.lstms):
            lstm.load_state_dict({f"{name}_l0": state[f"lstm.{name}_l{k}"]
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        self.linear.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
        self.freeze()

    def set_trainable(self, trainable: bool) -> "GE2EUpstream":
        super().set_trainable(trainable)
        self.linear.requires_grad_(False)  # the package's embedding layer: not part of the stack
        return self

    @staticmethod
    def normalise_volume(wav: torch.Tensor, length: int) -> torch.Tensor:
        """Scale up (never down) to TARGET_DBFS RMS over the valid samples."""
        x = wav[:length]
        rms_db = 10 * torch.log10(torch.mean(x * x).clamp(min=1e-20))
        gain_db = (TARGET_DBFS - rms_db).clamp(min=0.0)
        return wav * 10 ** (gain_db / 20)

    def frames(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return wav_lens // 160 + 1

    def mel_frames(self, wavs: torch.Tensor, wav_lens: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """(B, N) -> power mel (B, T, 40); samples past each length are zeroed first."""
        mask = torch.arange(wavs.shape[1], device=wavs.device)[None] < wav_lens[:, None]
        wavs = wavs * mask
        if normalise:
            wavs = torch.stack([self.normalise_volume(w, int(n)) for w, n in zip(wavs, wav_lens)])
        return self.mel(wavs).transpose(1, 2)

    def layers(self, mels: torch.Tensor):
        """Power mel (B, T, 40) -> [log-mel padded to 256, LSTM 1, LSTM 2, LSTM 3], each (B, T, 256)."""
        log_mel = torch.log(mels + 1e-6)
        outs = [torch.nn.functional.pad(log_mel, (0, HIDDEN - N_MELS))]
        x = mels
        for lstm in self.lstms:
            x, _ = lstm(x)
            outs.append(x)
        return outs

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths = self.frames(wav_lens)
        mels = self.mel_frames(wavs, wav_lens)
        # LSTMs are causal: frames before each utterance's end do not see the padding
        stack = torch.stack(self.layers(mels), dim=2)  # (B, T, L, D)
        stack = stack[:, : int(lengths.max())]
        return btld_to_bdlt(stack).contiguous(), lengths
