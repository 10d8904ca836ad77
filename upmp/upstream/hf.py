"""HuggingFace transformers speech models from a local directory (`--upstream hf:<dir>`).

WavLM, HuBERT, wav2vec 2.0 and data2vec-audio checkpoints saved with
`save_pretrained` are loaded offline (local_files_only) and run with
output_hidden_states: the stack holds the CNN/projection output (hidden state 0)
and every Transformer layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch

from upmp.data.audio import SAMPLE_RATE
from upmp.data.layout import btld_to_bdlt
from upmp.upstream.base import Upstream


class HFUpstream(Upstream):
    """forward(wavs (B, N), wav_lens (B,)) -> (stack (B, D, L, T), lengths (B,))."""

    def __init__(self, directory: str):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        if not Path(directory, "config.json").is_file():
            raise FileNotFoundError(f"{directory}: no config.json (expected a save_pretrained directory)")
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True)
        self.num_layers = config.num_hidden_layers + 1
        self.dim = config.hidden_size
        stride = 1
        for s in config.conv_stride:
            stride *= s
        self.frame_shift = stride / SAMPLE_RATE
        # models with a layer-normalised CNN take an attention mask; group-norm ones must not
        self.use_mask = getattr(config, "feat_extract_norm", "layer") == "layer"
        self.freeze()

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = (torch.arange(wavs.shape[1], device=wavs.device)[None] < wav_lens[:, None]).long()
        out = self.model(wavs * mask, attention_mask=mask if self.use_mask else None,
                         output_hidden_states=True)
        stack = torch.stack(out.hidden_states, dim=2)  # (B, T, L, D)
        lengths = self.model._get_feat_extract_output_lengths(wav_lens).long()
        return btld_to_bdlt(stack).contiguous(), lengths
