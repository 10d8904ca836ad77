"""Speaker embeddings from layer stacks: full utterance (default) or multi-crop averaging.

Stacks are (L, T, D) numpy arrays (as stored by upmp.upstream.layer_stack); the
model takes (B, D, L, T) + mask (B, T). Batches group utterances of similar
length; the backends' masking makes the padding neutral.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List

import numpy as np
import torch

from upmp.data.crops import wrap_crop
from upmp.upstream.layer_stack import batches_by_length


def crops(stack: np.ndarray, crop_frames: int, num_crops: int) -> List[np.ndarray]:
    """num_crops evenly spaced crops of crop_frames frames of an (L, T, D) stack
    (wrapped around when the utterance is shorter)."""
    T = stack.shape[1]
    starts = np.linspace(0, max(0, T - crop_frames), num_crops).round().astype(int)
    return [wrap_crop(stack.transpose(1, 0, 2), int(s), crop_frames).transpose(1, 0, 2) for s in starts]


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
        T = max(lengths[i] for i in batch)
        L, _, D = stacks[batch[0]].shape
        x = np.zeros((len(batch), D, L, T), dtype=np.float32)
        mask = torch.zeros(len(batch), T, dtype=torch.bool)
        for row, i in enumerate(batch):
            x[row, :, :, :lengths[i]] = stacks[i].transpose(2, 0, 1)
            mask[row, :lengths[i]] = True
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


@torch.no_grad()
def upstream_stacks(upstream, data, utts: Iterable[str], device: str = "cpu",
                    source: str = "wav.scp") -> Iterator[np.ndarray]:
    """(L, T, D) layer stacks of data-dir utterances from an upstream, one utterance per
    forward (padding is not neutral for every upstream). Audio errors name the utterance."""
    from upmp.data.audio import MIN_SAMPLES, load_utterance
    for utt in utts:  # test data: audio shorter than the receptive field is a warning
        wav = torch.from_numpy(load_utterance(data, utt, source, min_samples=MIN_SAMPLES, strict=False))[None].to(device)
        stack, _ = upstream(wav, torch.tensor([wav.shape[1]], device=device))
        yield stack[0].permute(1, 2, 0).float().cpu().numpy()
