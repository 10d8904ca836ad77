"""Fixed-length crops with wrap padding, shared by training batches and multi-crop embeddings.

A sequence shorter than the crop is repeated (wrap-padded) to the crop's length, as the paper's
reference does for utterances shorter than 3 s.
"""
from __future__ import annotations

import numpy as np


def wrap_crop(mat: np.ndarray, start: int, length: int) -> np.ndarray:
    """Rows [start, start+length) of mat (T, ...), wrapping around when T < length."""
    T = mat.shape[0]
    if T >= length:
        return mat[start:start + length]
    return mat[np.arange(start, start + length) % T]
