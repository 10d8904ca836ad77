"""Verification metrics written from their definitions (docs conventions, "Metrics"), for tests to
check upmp.metrics / upmp.results / the trainer's validation against: brute force over every
threshold, no code shared with upmp. Tests import them as `from reference_metrics import ...`.

Operating points: a trial is accepted when its score >= t, t over the distinct scores and +inf.
EER: where P_miss and P_fa cross, linearly interpolated between the two operating points that
bracket the crossing (the convention upmp documents), in PERCENT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np


def operating_points(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    """P_miss(t), P_fa(t) at every distinct score t (increasing), then t = +inf, by counting."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    t = np.r_[np.unique(scores), np.inf]
    accepted = scores[None, :] >= t[:, None]                          # (thresholds, trials)
    p_miss = (~accepted[:, labels]).sum(axis=1) / labels.sum()
    p_fa = accepted[:, ~labels].sum(axis=1) / (~labels).sum()
    return p_miss, p_fa


def eer_percent(scores, labels) -> float:
    p_miss, p_fa = operating_points(scores, labels)
    for k in range(1, len(p_miss)):
        if p_miss[k] >= p_fa[k]:  # the crossing lies on the segment from point k-1 to point k
            d0, d1 = p_fa[k - 1] - p_miss[k - 1], p_fa[k] - p_miss[k]   # d0 > 0 >= d1
            w = d0 / (d0 - d1)
            return 100 * float(p_miss[k - 1] + w * (p_miss[k] - p_miss[k - 1]))
    raise AssertionError("P_miss never reaches P_fa")


def min_dcf(scores, labels, p_target: float) -> float:
    """Normalised: min_t P_miss P_tar + P_fa (1 - P_tar), over min(P_tar, 1 - P_tar) (C_miss = C_fa = 1)."""
    p_miss, p_fa = operating_points(scores, labels)
    return float(min(p_miss * p_target + p_fa * (1 - p_target)) / min(p_target, 1 - p_target))


def cllr(llr, labels) -> float:
    """(mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr)) / 2, in bits."""
    llr, labels = np.asarray(llr, dtype=np.float64), np.asarray(labels, dtype=bool)
    return float(0.5 * (np.mean(np.log2(1 + np.exp(-llr[labels]))) + np.mean(np.log2(1 + np.exp(llr[~labels])))))


def act_dcf(llr, labels, p_target: float) -> float:
    """Normalised DCF of the Bayes decisions: accept when llr > log((1 - P_tar) / P_tar)."""
    llr, labels = np.asarray(llr, dtype=np.float64), np.asarray(labels, dtype=bool)
    accept = llr > np.log((1 - p_target) / p_target)
    cost = np.mean(~accept[labels]) * p_target + np.mean(accept[~labels]) * (1 - p_target)
    return float(cost / min(p_target, 1 - p_target))


def read_scored_trials(trials: Path, scores: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of a Kaldi trials file (`u1 u2 target|nontarget`) and a score file
    (`u1 u2 score`, any order), matched by the pair."""
    by_pair = {}
    for line in Path(scores).read_text().splitlines():
        a, b, s = line.split()
        by_pair[a, b] = float(s)
    rows = [line.split() for line in Path(trials).read_text().splitlines()]
    assert len(by_pair) == len(rows)
    return np.array([by_pair[a, b] for a, b, _ in rows]), np.array([t == "target" for *_, t in rows])


def results_md_rows(path: Path) -> Dict[Tuple[str, str], List[str]]:
    """RESULTS.md's table: {(test set, system): [EER, minDCF 0.01, minDCF 0.05, Cllr, actDCF 0.01, counts]}."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] not in ("test set", "---"):
            rows[cells[0], cells[1]] = cells[2:]
    return rows
