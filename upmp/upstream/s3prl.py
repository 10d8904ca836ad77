"""S3PRL upstreams by name (`wavlm_base_plus`, `hubert_base`, `wav2vec2_large_ll60k`, ...,
and `<kind>_local` with a checkpoint path), as frozen layer-stack extractors."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from upmp.data.audio import SAMPLE_RATE
from upmp.upstream.base import Upstream


class S3PRLLayerStack(Upstream):
    """A frozen upstream that returns every hidden state.

    forward(wavs (B, N) float, wav_lens (B,)) -> (stack (B, D, L, T), lengths (B,))

    Frame counts follow S3PRL: ceil(N / 320) for a 20 ms upstream. Padding
    is not neutral for these models: the Base models' first CNN layer
    normalises each channel over the whole (padded) input, so a batched
    utterance gets slightly different features than alone. Extraction
    therefore runs one utterance per forward unless a batch size is asked for.
    """

    def __init__(self, name: str, ckpt: Optional[str] = None):
        super().__init__()
        from s3prl.nn import S3PRLUpstream
        if name.endswith("_local") and not ckpt:
            raise ValueError(f"upstream {name!r} needs --upstream_ckpt <path>")
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"upstream checkpoint not found: {ckpt}")
        self.name = name
        self.upstream = S3PRLUpstream(name, path_or_url=ckpt)
        self.num_layers = self.upstream.num_layers
        self.dim = self.upstream.hidden_sizes[-1]
        rates = set(self.upstream.downsample_rates)
        if len(rates) != 1 or len(set(self.upstream.hidden_sizes)) != 1:
            raise ValueError(f"upstream {name!r} has layers of unequal rate/width; a layer stack needs one")
        self.frame_shift = rates.pop() / SAMPLE_RATE
        self.freeze()  # S3PRLUpstream is built in train mode (dropout on): eval, no gradients

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, hidden_lens = self.upstream(wavs, wav_lens)
        stack = torch.stack(hidden, dim=2)  # (B, T, L, D)
        return stack.permute(0, 3, 2, 1).contiguous(), hidden_lens[0]
