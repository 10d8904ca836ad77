"""Two-covariance PLDA (Ioffe 2006; Kaldi's ivector-compute-plda), trained by EM.

Model: x = y + e with speaker variable y ~ N(mu, Sb) and residual e ~ N(0, Sw).
Scoring works in the space that simultaneously diagonalises the two covariances
(Sw -> I, Sb -> diag(psi)), where the log-likelihood ratio of "same speaker"
over "different speakers" for single enrolment and test vectors u1, u2 is

    llr = sum_d a_d (u1_d^2 + u2_d^2) + b_d u1_d u2_d + c,
    a_d = 1 / (2 (psi_d + 1)) - (psi_d + 1) / (2 (2 psi_d + 1)),
    b_d = psi_d / (2 psi_d + 1),
    c   = sum_d log(psi_d + 1) - log(2 psi_d + 1) / 2,

so both trial lists and cohort matrices are a few matrix products.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.linalg import eigh

logger = logging.getLogger(__name__)


def _speaker_stats(X: np.ndarray, labels: Sequence):
    """Per-speaker counts (S,), sums (S, d) and the total scatter sum_i x_i x_i^T."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    S = inverse.max() + 1
    counts = np.bincount(inverse, minlength=S).astype(np.float64)
    sums = np.zeros((S, X.shape[1]))
    np.add.at(sums, inverse, X)
    return counts, sums, X.T @ X


@dataclass
class PLDA:
    """A trained two-covariance PLDA. fit() estimates mu, Sb, Sw; score_* compute LLRs."""

    mean: Optional[np.ndarray] = None
    between: Optional[np.ndarray] = None   # Sb
    within: Optional[np.ndarray] = None    # Sw

    def __post_init__(self) -> None:
        """A PLDA given its parameters (mean, Sb, Sw) scores at once; PLDA().fit(...) estimates them."""
        if self.mean is not None:
            self.mean, self.between, self.within = (np.asarray(a, dtype=np.float64)
                                                    for a in (self.mean, self.between, self.within))
            self._diagonalise()

    def fit(self, X: np.ndarray, labels: Sequence, num_iters: int = 10) -> "PLDA":
        X = np.asarray(X, dtype=np.float64)
        counts, sums, scatter = _speaker_stats(X, labels)
        if len(counts) < 2:
            raise ValueError("PLDA needs at least two speakers")
        N, d = X.shape
        means = sums / counts[:, None]
        mu = X.mean(axis=0)
        # initialise from the labelled scatters
        Sw = (scatter - (sums.T / counts) @ sums) / N + 1e-6 * np.eye(d)
        Sb = np.cov(means.T, bias=True).reshape(d, d) + 1e-6 * np.eye(d)
        for _ in range(num_iters):
            mu, Sb, Sw = self._em_step(counts, sums, scatter, mu, Sb, Sw)
        self.mean, self.between, self.within = mu, Sb, Sw
        self._diagonalise()
        return self

    @staticmethod
    def _em_step(counts, sums, scatter, mu, Sb, Sw):
        """One EM iteration; speakers with the same count share a posterior covariance."""
        Bp, Wp = np.linalg.inv(Sb), np.linalg.inv(Sw)
        S, d = sums.shape
        N = counts.sum()
        gamma = np.empty_like(sums)
        cov_sum = np.zeros((d, d))       # sum_s L_s^-1
        weighted_cov = np.zeros((d, d))  # sum_s n_s L_s^-1
        for n in np.unique(counts):
            idx = np.flatnonzero(counts == n)
            L_inv = np.linalg.inv(Bp + n * Wp)
            gamma[idx] = (L_inv @ (Bp @ mu[:, None] + Wp @ sums[idx].T)).T
            cov_sum += len(idx) * L_inv
            weighted_cov += len(idx) * n * L_inv
        new_mu = gamma.mean(axis=0)
        new_Sb = (cov_sum + gamma.T @ gamma) / S - np.outer(new_mu, new_mu)
        cross = sums.T @ gamma
        new_Sw = (scatter - cross - cross.T + weighted_cov + (gamma.T * counts) @ gamma) / N
        sym = lambda A: (A + A.T) / 2  # noqa: E731
        return new_mu, sym(new_Sb), sym(new_Sw)

    def _diagonalise(self) -> None:
        psi, V = eigh(self.between, self.within)  # V^T Sw V = I, V^T Sb V = diag(psi)
        psi = np.maximum(psi, 0.0)
        self.transform, self.psi = V, psi
        self._a = 1.0 / (2 * (psi + 1)) - (psi + 1) / (2 * (2 * psi + 1))
        self._b = psi / (2 * psi + 1)
        self._c = float(np.sum(np.log(psi + 1) - 0.5 * np.log(2 * psi + 1)))

    def project(self, X: np.ndarray) -> np.ndarray:
        """(N, d) -> (N, d) in the diagonal space."""
        return (np.asarray(X, dtype=np.float64) - self.mean) @ self.transform

    def score_pairs(self, U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
        """LLRs of row pairs of projected vectors (N, d), (N, d) -> (N,)."""
        return (U1 * U1 + U2 * U2) @ self._a + (U1 * U2) @ self._b + self._c

    def score_matrix(self, U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
        """LLRs of all pairs of projected vectors (N, d) x (M, d) -> (N, M)."""
        q1, q2 = (U1 * U1) @ self._a, (U2 * U2) @ self._a
        return q1[:, None] + q2[None, :] + (U1 * self._b) @ U2.T + self._c
