"""Calibration of scores to log-likelihood ratios, and the metrics of calibrated scores.

Linear logistic-regression calibration (as in BOSARIS / Brummer): llr = w * s + b,
fitted on a held-out trial list with the two classes weighted equally, so the
fitted log-odds are LLRs (prior 0.5). Cllr and actual DCF measure how good
the LLRs are as decisions, beside minDCF which ignores calibration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from upmp.errors import ScoringError


@dataclass
class LinearCalibration:
    scale: float = 1.0
    offset: float = 0.0

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, source: str = "the calibration trials",
            ) -> "LinearCalibration":
        from sklearn.linear_model import LogisticRegression
        labels = np.asarray(labels, dtype=bool)
        if labels.all() or not labels.any():
            raise ScoringError(f"{source}: calibration needs target and nontarget trials, got "
                               f"{int(labels.sum())} target and {int((~labels).sum())} nontarget")
        model = LogisticRegression(C=1e6, class_weight="balanced", max_iter=1000)
        model.fit(np.asarray(scores, dtype=np.float64)[:, None], labels)
        return cls(float(model.coef_[0, 0]), float(model.intercept_[0]))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset


def cllr(llr: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits: 0 perfect, 1 for a system that always says llr = 0."""
    llr, labels = np.asarray(llr, dtype=np.float64), np.asarray(labels, dtype=bool)
    c_tar = np.mean(np.logaddexp(0, -llr[labels]))
    c_non = np.mean(np.logaddexp(0, llr[~labels]))
    return float((c_tar + c_non) / (2 * np.log(2)))


def actual_dcf(llr: np.ndarray, labels: np.ndarray, p_target: float) -> float:
    """Normalised DCF of Bayes decisions (accept when llr > log((1 - P_tar) / P_tar))."""
    llr, labels = np.asarray(llr, dtype=np.float64), np.asarray(labels, dtype=bool)
    threshold = np.log((1 - p_target) / p_target)
    p_miss = np.mean(llr[labels] <= threshold)
    p_fa = np.mean(llr[~labels] > threshold)
    return float((p_miss * p_target + p_fa * (1 - p_target)) / min(p_target, 1 - p_target))
