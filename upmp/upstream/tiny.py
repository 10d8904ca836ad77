"""Tiny randomly initialised upstream checkpoints that S3PRL loads offline.

Pretrained weights cannot be downloaded here, so tests and the mini recipe use
small WavLM / HuBERT / wav2vec 2.0 models with random weights, saved in exactly
the checkpoint formats S3PRL's `wavlm_local`, `hubert_local` and
`wav2vec2_local` entries read. The convolutional front end keeps the real
models' kernel/stride pattern (stride product 320 samples = 20 ms at 16 kHz),
so frame counts match the real upstreams.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict

import torch

from upmp.data.audio import SAMPLE_RATE

KINDS = ("wavlm", "hubert", "wav2vec2")


def conv_feature_layers(conv_dim: int) -> str:
    """The real models' 7-layer CNN (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) at width conv_dim."""
    return f"[({conv_dim},10,5)] + [({conv_dim},3,2)] * 4 + [({conv_dim},2,2)] * 2"


def _encoder_cfg(num_layers: int, dim: int, ffn_dim: int, heads: int, conv_dim: int) -> Dict:
    return {
        "encoder_layers": num_layers,
        "encoder_embed_dim": dim,
        "encoder_ffn_embed_dim": ffn_dim,
        "encoder_attention_heads": heads,
        "conv_feature_layers": conv_feature_layers(conv_dim),
        "conv_pos": 32,
        "conv_pos_groups": 8,
        "extractor_mode": "default",
        "layer_norm_first": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
    }


def build_tiny_checkpoint(kind: str, path: str, num_layers: int = 4, dim: int = 128,
                          ffn_dim: int = 256, heads: int = 4, conv_dim: int = 128,
                          seed: int = 0) -> Path:
    """Write a random-init checkpoint for S3PRL's `<kind>_local` entry and return its path."""
    if kind not in KINDS:
        raise ValueError(f"unknown upstream kind {kind!r}; choose from {', '.join(KINDS)}")
    if dim % heads:
        raise ValueError(f"dim {dim} must be divisible by heads {heads}")
    torch.manual_seed(seed)
    cfg = _encoder_cfg(num_layers, dim, ffn_dim, heads, conv_dim)
    if kind == "wavlm":
        from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig
        cfg.update({"normalize": False, "relative_position_embedding": True,
                    "num_buckets": 64, "max_distance": 256, "gru_rel_pos": True})
        model = WavLM(WavLMConfig(cfg))
        state = {"cfg": cfg, "model": model.state_dict()}
    elif kind == "hubert":
        from s3prl.upstream.hubert.hubert_model import (HubertConfig, HubertModel,
                                                        HubertPretrainingConfig)
        from s3prl.upstream.utils import merge_with_parent
        task_cfg = {"label_rate": 50.0, "sample_rate": SAMPLE_RATE, "normalize": False}
        model_cfg = dict(cfg, label_rate=50.0, final_dim=dim // 2)
        symbols = [[str(i) for i in range(8)]]
        model = HubertModel(merge_with_parent(HubertConfig, model_cfg),
                            merge_with_parent(HubertPretrainingConfig, task_cfg), symbols)
        state = {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": model.state_dict(),
                 "dictionaries_symbols": symbols}
    else:
        from s3prl.upstream.utils import merge_with_parent
        from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model
        task_cfg = {"sample_rate": SAMPLE_RATE, "normalize": False}
        model_cfg = dict(cfg, final_dim=dim // 2, latent_vars=32, latent_groups=2, latent_dim=0)
        merge_with_parent(AudioPretrainingConfig, task_cfg)
        model = Wav2Vec2Model(merge_with_parent(Wav2Vec2Config, model_cfg))
        state = {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": model.state_dict()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out
