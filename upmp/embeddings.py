"""Speaker embeddings from layer stacks: full utterance (default) or multi-crop averaging, and
their files (xvector.ark/scp, spk_xvector.ark/scp as in Kaldi and WeSpeaker).

Stacks are (L, T, D) numpy arrays (as stored by upmp.data.layer_stacks); the
model takes (B, D, L, T) + mask (B, T). Batches group utterances of similar
length; the backends' masking makes the padding neutral.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from upmp.data.crops import wrap_crop
from upmp.errors import ModelFileError, UpstreamError
from upmp.data.layer_stacks import LayerStackMeta, batches_by_length, layers_text
from upmp.data.layout import ltd_to_tld, pad_stacks, tld_to_ltd


def crops(stack: np.ndarray, crop_frames: int, num_crops: int) -> List[np.ndarray]:
    """num_crops evenly spaced crops of crop_frames frames of an (L, T, D) stack
    (wrapped around when the utterance is shorter)."""
    T = stack.shape[1]
    starts = np.linspace(0, max(0, T - crop_frames), num_crops).round().astype(int)
    return [tld_to_ltd(wrap_crop(ltd_to_tld(stack), int(s), crop_frames)) for s in starts]


@torch.no_grad()
def embed_stacks(model, stacks: List[np.ndarray], max_batch_frames: int = 6000, device: str = "cpu",
                 ) -> np.ndarray:
    """(N,) list of (L, T, D) -> (N, E) float32 embeddings (one utterance per batch when the
    backend is not padding-invariant)."""
    lengths = [s.shape[1] for s in stacks]
    out = np.empty((len(stacks), model.embed_dim), dtype=np.float32)
    if not getattr(model, "padding_invariant", False):
        max_batch_frames = 0
    for batch in batches_by_length(lengths, max_batch_frames):
        x, lens = pad_stacks([stacks[i] for i in batch])  # (b, D, L, T)
        mask = torch.arange(x.shape[-1])[None] < torch.from_numpy(lens)[:, None]
        out[batch] = model(torch.from_numpy(x).to(device), mask.to(device)).cpu().numpy()
    return out


def embed_utterances(model, stacks: Iterable[np.ndarray], crop_frames: int = 0, num_crops: int = 1,
                     max_batch_frames: int = 6000, device: str = "cpu") -> np.ndarray:
    """Full-utterance embeddings, or (crop_frames > 0) the mean of the length-normalised
    embeddings of num_crops crops."""
    stacks = list(stacks)
    if crop_frames <= 0:
        return embed_stacks(model, stacks, max_batch_frames, device)
    pieces = [c for s in stacks for c in crops(s, crop_frames, num_crops)]
    emb = embed_stacks(model, pieces, max_batch_frames, device)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.reshape(len(stacks), num_crops, -1).mean(axis=1)


def check_stacks_fit(stacks: LayerStackMeta, model: LayerStackMeta, source: str,
                     allow_other_upstream: bool = False) -> None:
    """Layer stacks fed to a model must come from the upstream it was trained on: the same L x D,
    and the same upstream name (another upstream with the same L x D gives embeddings without a
    word otherwise) unless allow_other_upstream, and the same hidden states (--layers of stage 1); when
    both record the upstream's weights (weights_sha256: a checkpoint file's), the same weights."""
    if stacks.layers != model.layers:
        raise UpstreamError(f"{source}: layer stacks of hidden states {layers_text(stacks.layers)} of {stacks.upstream}, "
                            f"but the model was trained on hidden states {layers_text(model.layers)}; extract the "
                            f"stacks with --layers {layers_text(model.layers)}")
    if (stacks.num_layers, stacks.dim) != (model.num_layers, model.dim):
        raise UpstreamError(f"{source}: layer stacks are L={stacks.num_layers} x D={stacks.dim} ({stacks.upstream}) "
                            f"but the model was trained on L={model.num_layers} x D={model.dim} ({model.upstream})")
    if stacks.upstream != model.upstream and not allow_other_upstream:
        raise UpstreamError(f"{source}: layer stacks of upstream {stacks.upstream!r}, but the model was trained on "
                            f"{model.upstream!r} (same L={model.num_layers} x D={model.dim}); extract the stacks "
                            f"with --upstream {model.upstream}, or pass --allow_other_upstream if this is intended")
    if None not in (stacks.weights_sha256, model.weights_sha256) and stacks.weights_sha256 != model.weights_sha256 \
            and not allow_other_upstream:
        raise UpstreamError(f"{source}: layer stacks of {stacks.upstream} with weights sha256 "
                            f"{stacks.weights_sha256[:12]}..., but the model was trained on stacks of its weights "
                            f"sha256 {model.weights_sha256[:12]}...; give the checkpoint the training stacks were "
                            f"extracted with (--upstream_ckpt), or pass --allow_other_upstream if this is intended")


def embed_all(model, utts: Sequence[str], stacks_of: Callable[[Sequence[str]], Iterable[np.ndarray]],
              crop_frames: int = 0, num_crops: int = 1, max_batch_frames: int = 6000, device: str = "cpu",
              chunk_size: int = 256) -> Dict[str, np.ndarray]:
    """{utt: (E,) float32} for utts, chunk_size utterances' stacks in memory at a time
    (stacks_of(chunk) yields their (L, T, D) stacks in order); progress on a tqdm bar."""
    embeddings = {}
    with tqdm(total=len(utts), desc="embeddings", mininterval=5) as bar:
        for start in range(0, len(utts), chunk_size):
            chunk = utts[start:start + chunk_size]
            emb = embed_utterances(model, stacks_of(chunk), crop_frames, num_crops, max_batch_frames, device)
            for utt, e in zip(chunk, emb):
                if not np.isfinite(e).all():  # the stacks were checked when written: the model is broken
                    raise ModelFileError(f"utterance {utt}: the model's embedding holds NaN or inf; its weights "
                                         f"are not usable (retrain, or take another checkpoint)")
            embeddings.update(zip(chunk, emb))
            bar.update(len(chunk))
    return embeddings


MODEL_RECORD = "model.sha256"  # beside xvector.scp: `<sha256>  <model file>` of the model that embedded it


def write_model_record(out: Path, model_path: str) -> None:
    """Record which model file made the embeddings in `out` (sha256sum's format); written before
    xvector.scp, the old one removed first, so a record never describes older vectors."""
    from upmp.fileio import atomic_write_text, file_sha256
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "xvector.scp").unlink(missing_ok=True)
    atomic_write_text(out / MODEL_RECORD, f"{file_sha256(model_path)}  {model_path}\n")


def read_model_record(out: Path) -> Optional[Tuple[str, str]]:
    """(sha256, model path as given to stage 3) from <out>/model.sha256, None when there is none."""
    f = Path(out) / MODEL_RECORD
    if not f.is_file():
        return None
    digest, _, path = f.read_text().strip().partition("  ")
    return digest, path


def write_embeddings(out: Path, embeddings: Dict[str, np.ndarray], utt2spk: Optional[Dict[str, str]] = None) -> None:
    """xvector.ark/scp (one float vector per utterance) and, with utt2spk, spk_xvector.ark/scp (the
    mean of the length-normalised utterance embeddings per speaker; written first: xvector.scp is the
    last vector file; stage 3's done-record follows it, upmp.stages.extract_embeddings)."""
    from upmp.fileio import write_vectors
    from upmp.scoring.scorers import speaker_means
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("xvector.scp", "spk_xvector.scp"):
        (out / name).unlink(missing_ok=True)
    if utt2spk:
        utts = sorted(u for u in embeddings if u in utt2spk)
        labels = [utt2spk[u] for u in utts]
        means = speaker_means(np.stack([embeddings[u] for u in utts]), labels)  # rows: sorted speakers
        write_vectors(out, "spk_xvector", dict(zip(sorted(set(labels)), means.astype(np.float32))))
    write_vectors(out, "xvector", embeddings)
