"""Score normalisation against a cohort: S-norm and adaptive S-norm (AS-norm).

For a trial (e, t) with raw score s, each side is scored against every cohort
entry (training-speaker mean embeddings); with mu_x, sd_x the mean and standard
deviation of side x's cohort scores (AS-norm: of its top-N scores only),

    s_norm = 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t).

The statistics depend on one side only, so they are computed once per
utterance (in chunks, as a utterance x cohort score matrix), not per trial.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from upmp.errors import ScoringError


def cohort_stats(scorer, R: np.ndarray, cohort: np.ndarray, top_n: Optional[int] = None,
                 chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's cohort scores (top-N highest only if top_n)."""
    K = cohort.shape[0]
    if top_n is not None and not 1 <= top_n:
        raise ScoringError(f"cohort top-N must be >= 1, got {top_n}")
    n = K if top_n is None else min(top_n, K)
    mu, sd = np.empty(len(R)), np.empty(len(R))
    for start in range(0, len(R), chunk):
        S = scorer.score_matrix(R[start:start + chunk], cohort)
        if n < K:
            S = np.partition(S, K - n, axis=1)[:, K - n:]
        mu[start:start + chunk] = S.mean(axis=1)
        sd[start:start + chunk] = S.std(axis=1)
    return mu, np.maximum(sd, 1e-8)


def s_norm(scores: np.ndarray, enroll_idx: np.ndarray, test_idx: np.ndarray,
           mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """S-norm of trial scores given per-utterance cohort statistics (indexed like R)."""
    return 0.5 * ((scores - mu[enroll_idx]) / sd[enroll_idx] + (scores - mu[test_idx]) / sd[test_idx])
