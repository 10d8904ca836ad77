"""Cosine scoring of trials on length-normalised embeddings (vectorised)."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from upmp.data.kaldi_dir import DataDirError


def embedding_matrix(embeddings: Dict[str, np.ndarray], keys: List[str], source: str = "embeddings"
                     ) -> np.ndarray:
    """Stack embeddings of `keys` into (N, E); error names the first missing key."""
    missing = [k for k in keys if k not in embeddings]
    if missing:
        raise DataDirError(f"{source}: no embedding for utterance {missing[0]!r} "
                           f"({len(missing)} trial utterance(s) missing)")
    return np.stack([np.asarray(embeddings[k], dtype=np.float64) for k in keys])


def cosine_scores(embeddings: Dict[str, np.ndarray], trials: List[Tuple[str, str, bool]],
                  mean: Optional[np.ndarray] = None, source: str = "embeddings") -> np.ndarray:
    """Cosine similarity of each trial pair; `mean` (e.g. the training-set mean) is
    subtracted first when given."""
    keys = sorted({u for a, b, _ in trials for u in (a, b)})
    index = {k: i for i, k in enumerate(keys)}
    X = embedding_matrix(embeddings, keys, source)
    if mean is not None:
        X = X - mean
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    a = np.fromiter((index[t[0]] for t in trials), dtype=np.int64, count=len(trials))
    b = np.fromiter((index[t[1]] for t in trials), dtype=np.int64, count=len(trials))
    return np.einsum("ij,ij->i", X[a], X[b])
