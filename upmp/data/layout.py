"""The layouts a layer stack takes, and the one place that converts between them.

    (L, T, D)     one utterance: L hidden states (0 = the CNN / projection output), T frames, D channels
    (T, L*D)      one utterance as a Kaldi matrix: layer-major columns, column l*D + d is channel d of
                  hidden state l (upmp.data.layer_stacks stores it so)
    (T, L, D)     one utterance frame-major: what crops cut along the first axis, an int8 stack's records
    (B, T, L, D)  a batch as the upstreams stack their hidden states and as cached crops are read
    (B, D, L, T)  a batch as the backends take it (one row: (D, L, T))

Each function takes a numpy array or a torch tensor and returns a view where the layout allows it
(the caller copies: np.ascontiguousarray, .contiguous()), except pad_stacks, which builds a batch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def _permute(x, order: Tuple[int, ...]):
    return x.permute(*order) if hasattr(x, "permute") else x.transpose(order)


def ltd_to_tld(stack):
    """(L, T, D) -> (T, L, D)."""
    return _permute(stack, (1, 0, 2))


def tld_to_ltd(frames):
    """(T, L, D) -> (L, T, D)."""
    return _permute(frames, (1, 0, 2))


def btld_to_bdlt(batch):
    """(B, T, L, D) -> (B, D, L, T)."""
    return _permute(batch, (0, 3, 2, 1))


def dlt_to_ltd(row):
    """One row of a model batch (D, L, T) -> (L, T, D)."""
    return _permute(row, (1, 2, 0))


def ltd_to_dlt(stack):
    """(L, T, D) -> (D, L, T), one row of a model batch."""
    return _permute(stack, (2, 0, 1))


def split_layers(x, num_layers: int, dim: Optional[int] = None):
    """(..., L*D) -> (..., L, D): a matrix's rows split into hidden states (dim checks the width)."""
    lead, width = tuple(x.shape[:-1]), x.shape[-1]
    return x.reshape(lead + (num_layers, width // num_layers if dim is None else dim))


def merge_layers(x):
    """(..., L, D) -> (..., L*D): hidden states side by side, layer-major."""
    return x.reshape(tuple(x.shape[:-2]) + (x.shape[-2] * x.shape[-1],))


def stack_to_matrix(stack: np.ndarray) -> np.ndarray:
    """(L, T, D) -> (T, L*D), C-contiguous (as written to an ark)."""
    return np.ascontiguousarray(merge_layers(ltd_to_tld(stack)))


def matrix_to_stack(mat: np.ndarray, num_layers: int) -> np.ndarray:
    """(T, L*D) -> (L, T, D)."""
    T, LD = mat.shape
    if LD % num_layers:
        raise ValueError(f"matrix width {LD} is not a multiple of {num_layers} layers")
    return tld_to_ltd(split_layers(mat, num_layers))


def pad_stacks(stacks: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """List of (L, T_i, D) -> (B, D, L, max T) zero-padded float32, (B,) int64 lengths T_i."""
    lens = np.array([s.shape[1] for s in stacks], dtype=np.int64)
    L, _, D = stacks[0].shape
    x = np.zeros((len(stacks), D, L, lens.max()), dtype=np.float32)
    for i, s in enumerate(stacks):
        x[i, :, :, :s.shape[1]] = ltd_to_dlt(s)
    return x, lens
