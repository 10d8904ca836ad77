"""Upstreams: frozen speech models that return every hidden state as a layer stack.

    upstream = build_upstream(name, ckpt)
    stack, lengths = upstream(wavs (B, N), wav_lens (B,))   # (B, D, L, T), (B,)
    upstream.num_layers, upstream.dim, upstream.frame_shift  # L (hidden state 0 included), D, seconds

Providers, chosen by the name:
    ge2e             the GE2E speaker encoder, weights from the resemblyzer wheel (upmp.upstream.ge2e)
    hf:<dir>         a HuggingFace transformers model saved in <dir> (upmp.upstream.hf)
    anything else    an S3PRL upstream name (wavlm_base_plus, hubert_base, wavlm_local + ckpt, ...)

Checkpoints are data: S3PRL's builders (distiller, mockingjay, ...) unpickle a checkpoint with
torch.load(weights_only=False), which runs any code it names, so every file handed to S3PRL or
transformers is first loaded with weights_only=True (upmp.safe_load), and refused in one line if
that fails: a `--upstream_ckpt`, the `*.bin` / `*.pt` weights of an `hf:<dir>`, and the files a
hub name's weights are read from in S3PRL's download cache (upmp.upstream.s3prl).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from upmp.errors import UpstreamError
from upmp.safe_load import check_checkpoint


def build_upstream(name: str, ckpt: Optional[str] = None):
    """The upstream of a name (see above); what a user can fix (a missing checkpoint or model dir,
    an unknown name, weights that cannot be downloaded) is an UpstreamError."""
    if ckpt and not Path(ckpt).is_file():
        raise UpstreamError(f"--upstream_ckpt {ckpt}: upstream checkpoint not found")
    if name == "ge2e":
        from upmp.upstream.ge2e import GE2EUpstream
        return GE2EUpstream(ckpt)
    if name.startswith("hf:"):
        if not (Path(name[3:]) / "config.json").is_file():
            raise UpstreamError(f"--upstream {name}: {name[3:]}/config.json not found (expected a directory "
                                f"written by transformers' save_pretrained)")
        check_checkpoint(name[3:], "a transformers weights file", error=UpstreamError)
        from upmp.upstream.hf import HFUpstream
        return HFUpstream(name[3:])
    if ckpt:
        check_checkpoint(ckpt, "an S3PRL upstream checkpoint (torch.save of tensors and plain data)",
                         error=UpstreamError)
    from upmp.upstream.s3prl import S3PRLUpstream
    return S3PRLUpstream(name, ckpt)
