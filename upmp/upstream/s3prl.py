"""S3PRL upstreams by name (`wavlm_base_plus`, `hubert_base`, `wav2vec2_large_ll60k`, ...,
and `<kind>_local` with a checkpoint path), as frozen layer-stack extractors."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

from upmp.data.audio import SAMPLE_RATE
from upmp.data.layout import btld_to_bdlt
from upmp.errors import UpstreamError
from upmp.upstream.base import Upstream


def s3prl_cache_dir() -> Path:
    """Where S3PRL keeps (and looks for) downloaded checkpoints: ~/.cache/s3prl/download by default."""
    from s3prl.util import download
    return Path(download._download_dir)  # get_dir() would create it


def _network_error(e: BaseException) -> bool:
    """True when e or an exception it was raised from is a failed connection / name resolution."""
    import socket
    import urllib.error
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)) \
                or type(e).__module__.startswith(("requests", "urllib3")):
            return True
        e = e.__cause__ or e.__context__
    return False


def _check_downloads() -> None:
    """Make S3PRL's hubconf modules check each torch file a download resolves to (a file in S3PRL's
    cache, fetched now or earlier) with weights_only=True before their builders unpickle it: each
    hubconf binds `_urls_to_filepaths` (s3prl.util.download) as a global, wrapped here once."""
    from upmp.safe_load import check_checkpoint, is_torch_file

    def checked(fetch):
        def urls_to_filepaths(*args, **kwargs):
            paths = fetch(*args, **kwargs)
            for path in [paths] if isinstance(paths, str) else paths:
                if is_torch_file(path):
                    check_checkpoint(path, f"an S3PRL checkpoint downloaded from {args[0] if args else 'a URL'}",
                                     "delete it from S3PRL's cache and download it again; if a fresh download is "
                                     "refused too, re-save it as tensors and plain data and use --upstream "
                                     "<kind>_local --upstream_ckpt <that file>",
                                     error=UpstreamError)
            return paths
        urls_to_filepaths.upmp_checked = True
        return urls_to_filepaths

    for module_name, module in list(sys.modules.items()):
        fetch = getattr(module, "_urls_to_filepaths", None) if module_name.startswith("s3prl.upstream.") else None
        if callable(fetch) and not getattr(fetch, "upmp_checked", False):
            module._urls_to_filepaths = checked(fetch)


def build_s3prl_upstream(name: str, ckpt: Optional[str] = None):
    """s3prl.nn.S3PRLUpstream(name); an unknown name, or weights that are neither in S3PRL's cache
    nor downloadable (no network), is one UpstreamError saying where S3PRL looked and the ways out."""
    from upmp.upstream import s3prl_hub
    s3prl_hub.install()  # import only this name's hubconf, not all of S3PRL's upstreams (~7 s)
    from s3prl.nn import S3PRLUpstream
    if name not in S3PRLUpstream.available_names():
        raise UpstreamError(f"--upstream {name}: not an S3PRL upstream name (see "
                            f"s3prl.nn.S3PRLUpstream.available_names()), nor ge2e or hf:<dir>")
    from s3prl import hub
    getattr(hub, name)  # imports the hubconf that defines the name (and those it imports)
    _check_downloads()
    try:
        return S3PRLUpstream(name, path_or_url=ckpt)
    except Exception as e:  # S3PRL's download raises requests / urllib errors, chained
        if not _network_error(e):
            raise
        cache = s3prl_cache_dir()
        kind = name.split("_")[0]
        raise UpstreamError(
            f"--upstream {name}: its weights are not in S3PRL's download cache {cache} and cannot be "
            f"downloaded here (no network: {type(e).__name__}). Either pre-fill the cache on a machine with "
            f"network: python -c \"from s3prl.nn import S3PRLUpstream; S3PRLUpstream('{name}')\" and copy "
            f"{cache}/ to the same path here; or use a local checkpoint: --upstream {kind}_local "
            f"--upstream_ckpt <file.pt> (or --upstream hf:<save_pretrained dir>)") from None


class S3PRLUpstream(Upstream):
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
        if name.endswith("_local") and not ckpt:
            raise UpstreamError(f"upstream {name!r} needs --upstream_ckpt <path>")
        if ckpt and not Path(ckpt).is_file():
            raise UpstreamError(f"--upstream_ckpt {ckpt}: upstream checkpoint not found")
        self.name = name
        self.upstream = build_s3prl_upstream(name, ckpt)
        self.num_layers = self.upstream.num_layers
        self.dim = self.upstream.hidden_sizes[-1]
        rates = set(self.upstream.downsample_rates)
        if len(rates) != 1 or len(set(self.upstream.hidden_sizes)) != 1:
            raise UpstreamError(f"upstream {name!r} has layers of unequal rate/width; a layer stack needs one")
        self.frame_shift = rates.pop() / SAMPLE_RATE
        self.freeze()  # S3PRLUpstream is built in train mode (dropout on): eval, no gradients

    def extract(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, hidden_lens = self.upstream(wavs, wav_lens)
        stack = torch.stack(hidden, dim=2)  # (B, T, L, D)
        return btld_to_bdlt(stack).contiguous(), hidden_lens[0]
