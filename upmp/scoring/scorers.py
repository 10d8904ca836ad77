"""Scoring back-ends over embeddings: cosine and the Kaldi x-vector PLDA recipe.

Every scorer has the same surface, so normalisation and the entry points treat
them alike:
    fit(train (N, E), labels)      estimate what the scorer needs (mean, LDA, PLDA)
    prepare(X (N, E)) -> R         per-utterance representation (done once per utterance)
    score_pairs(R1, R2) -> (N,)    scores of row pairs (trial lists)
    score_matrix(R1, R2) -> (N, M) scores of all pairs (cohorts)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from upmp.errors import ScoringError
from upmp.scoring.plda import PLDA


def length_normalise(X: np.ndarray, scale: float = 1.0) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))[:, None]
    return X * (scale / np.maximum(norms, 1e-12))


class CosineScorer:
    """Cosine similarity, optionally after subtracting the training-set mean."""

    name = "cosine"

    def __init__(self, subtract_mean: bool = False):
        self.subtract_mean = subtract_mean
        self.mean: Optional[np.ndarray] = None

    def fit(self, X: np.ndarray, labels: Optional[Sequence] = None) -> "CosineScorer":
        if self.subtract_mean:
            self.mean = np.asarray(X, dtype=np.float64).mean(axis=0)
        return self

    def prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.mean is not None:
            X = X - self.mean
        return length_normalise(X)

    def score_pairs(self, R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", R1, R2)

    def score_matrix(self, R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
        return R1 @ R2.T


class PLDAScorer:
    """Kaldi's x-vector back-end: subtract the training mean, LDA, length-normalise
    (to sqrt(dim), as ivector-normalize-length does), two-covariance PLDA, LLR scores."""

    name = "plda"

    def __init__(self, lda_dim: Optional[int] = 200, num_iters: int = 10):
        self.lda_dim, self.num_iters = lda_dim, num_iters
        self.mean: Optional[np.ndarray] = None
        self.lda = None
        self.plda: Optional[PLDA] = None

    def fit(self, X: np.ndarray, labels: Sequence) -> "PLDAScorer":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        X = np.asarray(X, dtype=np.float64)
        labels = np.asarray(labels)
        n_spk = len(np.unique(labels))
        if n_spk < 2:
            raise ScoringError("PLDA training needs embeddings of at least two speakers "
                               f"(got {n_spk}); give --train_embeddings of a multi-speaker set")
        self.mean = X.mean(axis=0)
        Xc = X - self.mean
        dim = min(self.lda_dim or X.shape[1], n_spk - 1, X.shape[1])
        self.lda = LinearDiscriminantAnalysis(n_components=dim, solver="eigen", shrinkage=1e-4).fit(Xc, labels)
        Z = self._lda_lnorm(Xc)
        self.plda = PLDA().fit(Z, labels, self.num_iters)
        return self

    def _lda_lnorm(self, Xc: np.ndarray) -> np.ndarray:
        Z = self.lda.transform(Xc)
        return length_normalise(Z, np.sqrt(Z.shape[1]))

    def prepare(self, X: np.ndarray) -> np.ndarray:
        return self.plda.project(self._lda_lnorm(np.asarray(X, dtype=np.float64) - self.mean))

    def score_pairs(self, R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
        return self.plda.score_pairs(R1, R2)

    def score_matrix(self, R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
        return self.plda.score_matrix(R1, R2)


SCORING_METHODS = ("cosine", "plda")        # build_scorer's names (upmp.bin.score --method, sv.sh --scoring)
SCORE_NORMS = ("none", "snorm", "asnorm")   # score_trials' norm


def build_scorer(method: str, lda_dim: Optional[int] = 200, subtract_mean: bool = False):
    if method == "cosine":
        return CosineScorer(subtract_mean=subtract_mean)
    if method == "plda":
        return PLDAScorer(lda_dim=lda_dim)
    raise ValueError(f"unknown scoring method {method!r} (cosine, plda)")


def speaker_means(X: np.ndarray, labels: Sequence) -> np.ndarray:
    """Mean of length-normalised embeddings per speaker (rows in sorted label order)."""
    labels = np.asarray(labels)
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, X.shape[1]))
    np.add.at(sums, inverse, length_normalise(np.asarray(X, dtype=np.float64)))
    return sums / np.bincount(inverse)[:, None]


def score_trials(scorer, embeddings: dict, trials: Sequence, source: str = "embeddings",
                 cohort: Optional[np.ndarray] = None, norm: str = "none", top_n: Optional[int] = None,
                 chunk: int = 8192) -> np.ndarray:
    """Scores of (enroll, test, label) trials; each utterance is prepared once.

    norm: "none", "snorm" (whole cohort) or "asnorm" (top_n cohort scores per side).
    Raises DataDirError naming the first trial utterance without an embedding.
    """
    from upmp.data.kaldi_dir import DataDirError
    from upmp.scoring.normalization import cohort_stats, s_norm
    n = len(trials)
    if n == 0:
        raise ScoringError("no trials to score")
    sides = np.array([t[0] for t in trials] + [t[1] for t in trials])
    keys, inverse = np.unique(sides, return_inverse=True)  # C-speed string sort, no per-trial dict look-ups
    keys = keys.tolist()  # plain str: dict look-ups with numpy strings are several times slower
    missing = [k for k in keys if k not in embeddings]
    if missing:
        raise DataDirError(f"{source}: no embedding for trial utterance {missing[0]!r} "
                           f"({len(missing)} trial utterance(s) missing)")
    R = scorer.prepare(np.stack([np.asarray(embeddings[k], dtype=np.float64) for k in keys]))
    e, t = inverse[:n], inverse[n:]
    scores = np.concatenate([scorer.score_pairs(R[e[i:i + chunk]], R[t[i:i + chunk]])
                             for i in range(0, n, chunk)]) if n else np.empty(0)
    if norm == "none":
        return scores
    if norm not in ("snorm", "asnorm"):
        raise ValueError(f"unknown score normalisation {norm!r} (none, snorm, asnorm)")
    if cohort is None or len(cohort) == 0:
        raise ScoringError(f"{norm} needs a cohort of embeddings")
    mu, sd = cohort_stats(scorer, R, scorer.prepare(cohort), top_n if norm == "asnorm" else None)
    return s_norm(scores, e, t, mu, sd)
