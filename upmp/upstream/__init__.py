"""Upstreams: frozen speech models that return every hidden state as a layer stack.

    upstream = build_upstream(name, ckpt)
    stack, lengths = upstream(wavs (B, N), wav_lens (B,))   # (B, D, L, T), (B,)
    upstream.num_layers, upstream.dim, upstream.frame_shift  # L (hidden state 0 included), D, seconds

Providers, chosen by the name:
    ge2e             the GE2E speaker encoder, weights from the resemblyzer wheel (upmp.upstream.ge2e)
    hf:<dir>         a HuggingFace transformers model saved in <dir> (upmp.upstream.hf)
    anything else    an S3PRL upstream name (wavlm_base_plus, hubert_base, wavlm_local + ckpt, ...)
"""
from __future__ import annotations

from typing import Optional


def build_upstream(name: str, ckpt: Optional[str] = None):
    if name == "ge2e":
        from upmp.upstream.ge2e import GE2EUpstream
        return GE2EUpstream(ckpt)
    if name.startswith("hf:"):
        from upmp.upstream.hf import HFUpstream
        return HFUpstream(name[3:])
    from upmp.upstream.s3prl import S3PRLLayerStack
    return S3PRLLayerStack(name, ckpt)
