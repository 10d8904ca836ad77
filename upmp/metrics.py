"""Verification metrics: EER and normalised minDCF (conventions.md, "Metrics").

Operating points are taken at every observed score: a trial is accepted when
its score >= t, for t over the distinct scores plus +inf, so
P_miss(t) = #{targets < t} / n_target and P_fa(t) = #{nontargets >= t} / n_nontarget.

EER convention: linear interpolation between the two consecutive operating
points where P_miss - P_fa changes sign (the WeSpeaker convention; Kaldi's
compute-eer takes no interpolation). With all scores equal the EER is 50 %.
minDCF: min over the same points of C_miss P_miss P_tar + C_fa P_fa (1 - P_tar),
divided by min(C_miss P_tar, C_fa (1 - P_tar)).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from upmp.errors import ScoringError

EER_CONVENTION = "linear interpolation between the operating points that bracket P_miss = P_fa"
# How figures of the UniPool / L-TDNN authors' code compare with ours (docs/method.md, "Evaluation protocols").
AUTHORS_CONVENTIONS = ("the UniPool / L-TDNN authors' code reports minDCF (0.01) unnormalised (theirs x 100 = ours) "
                       "and clamps cosine scores to [0, 1] (the same EER unless its threshold is below 0)")


def operating_points(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(P_miss, P_fa) arrays, thresholds increasing (P_miss non-decreasing)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be 1-D arrays of the same length")
    n_tar, n_non = int(labels.sum()), int((~labels).sum())
    if n_tar == 0 or n_non == 0:
        raise ScoringError(f"need at least one target and one nontarget trial (got {n_tar} and {n_non})")
    order = np.argsort(scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    # thresholds: each distinct score (at the start of its group of ties), then +inf
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    tar_below = np.r_[0, np.cumsum(lab)][starts]        # targets with score < t
    non_below = np.r_[0, np.cumsum(~lab)][starts]       # nontargets with score < t
    p_miss = np.r_[tar_below, n_tar] / n_tar
    p_fa = (n_non - np.r_[non_below, n_non]) / n_non
    return p_miss, p_fa


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate as a fraction (0..1)."""
    p_miss, p_fa = operating_points(scores, labels)
    # First point with P_miss >= P_fa; k >= 1 since the first point is (0, 1), the last (1, 0).
    k = int(np.argmax(p_miss >= p_fa))
    m0, f0, m1, f1 = p_miss[k - 1], p_fa[k - 1], p_miss[k], p_fa[k]
    alpha = (f0 - m0) / ((m1 - m0) - (f1 - f0))
    return float(m0 + alpha * (m1 - m0))


def compute_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float,
                    c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost."""
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    p_miss, p_fa = operating_points(scores, labels)
    dcf = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1 - p_target)))
