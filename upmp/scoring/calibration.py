"""Calibration of scores to log-likelihood ratios, and the metrics of calibrated scores.

Linear logistic-regression calibration (as in BOSARIS / Brummer): llr = w * s + b,
fitted on a held-out trial list with the two classes weighted equally, so the
fitted log-odds are LLRs (prior 0.5). Cllr and actual DCF measure how good
the LLRs are as decisions, beside minDCF which ignores calibration.

Quality-aware calibration (QMF, as WeSpeaker, ESPnet-SPK and the LAP follow-up use):
llr = w . [s, q] + b, where q holds quality measures of both sides of the trial, taken
symmetrically (the minimum and the maximum over enrollment and test of each measure):
the log duration and the embedding norm before length normalisation. With the balanced
weighting the fitted objective is Cllr itself (plus a weak penalty), so on its training list
QMF is never worse than the linear calibration (whose features it contains).

Linear fusion (BOSARIS `train_linear_fuser`): llr = w . [s_1 .. s_K] + b over K systems' scores of the
same trials, fitted by the same logistic regression, prior-weighted at a target prior P: the target
trials weigh P / N_tar and the nontarget trials (1 - P) / N_non, and logit(P) is taken off the
fitted log-odds so the output is an LLR. P = 0.5 is the balanced weighting of the calibration
(LinearCalibration is the fusion of one system).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from upmp.errors import ConfigError, DataDirError, ScoringError

QUALITY_MEASURES = ("log_duration", "norm")


CALIBRATION_METHODS = ("linear", "qmf")  # LinearCalibration, QualityCalibration (upmp.scoring.files)


@dataclass
class LinearCalibration:
    scale: float = 1.0
    offset: float = 0.0

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, source: str = "the calibration trials",
            ) -> "LinearCalibration":
        fused = LinearFusion.fit(np.asarray(scores, dtype=np.float64)[:, None], labels, source=source)
        return cls(fused.weights[0], fused.offset)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset


@dataclass
class LinearFusion:
    """llr = weights . s + offset, s: (N, K) scores of K systems on the same N trials."""
    weights: List[float]
    offset: float
    prior: float = 0.5

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, prior: float = 0.5, source: str = "the calibration trials",
            ) -> "LinearFusion":
        """Prior-weighted logistic regression (see the module docstring) on (N, K) scores."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2:
            raise ValueError(f"scores must be (N, K), got shape {s.shape}")
        mean, std = s.mean(axis=0), s.std(axis=0)
        std[std == 0] = 1.0
        model = _logistic((s - mean) / std, labels, source, prior)
        w = model.coef_[0] / std  # back to raw scores
        return cls([float(v) for v in w], float(model.intercept_[0] - w @ mean - logit(prior)), float(prior))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) @ np.asarray(self.weights) + self.offset


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def check_prior(prior: float, option: str = "--prior") -> float:
    """A target prior strictly between 0 and 1 (ConfigError otherwise)."""
    if not 0 < prior < 1:
        raise ConfigError(f"{option} {prior}: the target prior must lie strictly between 0 and 1 (e.g. 0.5, 0.01)")
    return prior


def _logistic(features: np.ndarray, labels: np.ndarray, source: str = "the calibration trials", prior: float = 0.5):
    """Logistic regression on standardised features, target trials weighted N * prior / N_tar and
    nontarget trials N * (1 - prior) / N_non (prior 0.5: sklearn's "balanced"): its loss is the
    prior-weighted Cllr up to a constant, plus a weak L2 penalty (C = 1000: negligible on real trial
    lists, keeps the weights finite when a small list is separable)."""
    from sklearn.linear_model import LogisticRegression
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        raise ScoringError(f"{source}: calibration needs target and nontarget trials, got "
                           f"{int(labels.sum())} target and {int((~labels).sum())} nontarget")
    check_prior(prior)
    n, n_tar = len(labels), int(labels.sum())
    weights = {True: n * prior / n_tar, False: n * (1 - prior) / (n - n_tar)}
    return LogisticRegression(C=1e3, class_weight=weights, max_iter=10000, tol=1e-10).fit(features, labels)


def read_quality(emb_dir: str) -> Dict[str, np.ndarray]:
    """{utt: [log duration (s), embedding norm]} from <emb_dir>/utt2dur and xvector.scp (stage 3)."""
    from upmp.data.kaldi_dir import read_table
    from upmp.scoring.io import read_vectors
    d = Path(emb_dir)
    for name in ("utt2dur", "xvector.scp"):
        if not (d / name).is_file():
            raise DataDirError(f"{d / name}: not found; quality measures need stage 3's embeddings with utt2dur "
                               f"(delete {d / 'xvector.scp'} and rerun stage 3)")
    durations = read_table(str(d / "utt2dur"))
    out = {}
    for lineno, utt, vector in read_vectors(str(d / "xvector.scp")):
        if utt not in durations:
            raise DataDirError(f"{d / 'xvector.scp'}:{lineno}: utterance {utt!r} has no duration in {d / 'utt2dur'}")
        try:
            seconds = float(durations[utt])
        except ValueError:
            raise DataDirError(f"{d / 'utt2dur'}: duration of {utt!r} is not a number: {durations[utt]!r}") from None
        if not seconds > 0:
            raise DataDirError(f"{d / 'utt2dur'}: duration of {utt!r} must be positive, got {seconds}")
        out[utt] = np.array([np.log(seconds), np.linalg.norm(vector)])
    return out


def trial_quality(pairs: Sequence[Tuple[str, str]], quality: Dict[str, np.ndarray], source: str = "") -> np.ndarray:
    """(N, 2Q): per measure, the minimum then the maximum over the trial's two sides."""
    rows = np.empty((len(pairs), 2 * len(QUALITY_MEASURES)))
    for i, (a, b) in enumerate(pairs):
        for utt in (a, b):
            if utt not in quality:
                raise DataDirError(f"trial '{a} {b}': utterance {utt!r} has no quality measures{source}")
        qa, qb = quality[a], quality[b]
        rows[i, 0::2], rows[i, 1::2] = np.minimum(qa, qb), np.maximum(qa, qb)
    return rows


@dataclass
class QualityCalibration:
    """llr = score_weight * s + quality_weights . q + offset (q: trial_quality)."""
    score_weight: float = 1.0
    quality_weights: List[float] = field(default_factory=lambda: [0.0] * 2 * len(QUALITY_MEASURES))
    offset: float = 0.0

    @classmethod
    def fit(cls, scores: np.ndarray, quality: np.ndarray, labels: np.ndarray, source: str = "the calibration trials",
            ) -> "QualityCalibration":
        x = np.column_stack([np.asarray(scores, dtype=np.float64), quality])
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0  # a constant measure (all durations equal) carries no information
        model = _logistic((x - mean) / std, labels, source)
        w = model.coef_[0] / std  # back to raw features
        return cls(float(w[0]), [float(v) for v in w[1:]], float(model.intercept_[0] - w @ mean))

    def __call__(self, scores: np.ndarray, quality: np.ndarray) -> np.ndarray:
        return (self.score_weight * np.asarray(scores, dtype=np.float64)
                + np.asarray(quality, dtype=np.float64) @ np.asarray(self.quality_weights) + self.offset)

    def describe(self) -> dict:
        names = [f"{side}_{m}" for m in QUALITY_MEASURES for side in ("min", "max")]
        return {"score": self.score_weight, **dict(zip(names, self.quality_weights)), "offset": self.offset}


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
