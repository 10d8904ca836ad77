"""Score files from embedding files: scoring, calibration and id mapping as the entry points run them.

    n = score_file("plda", "exp/x/embeddings/test/xvector.scp", "data/test/trials", "exp/x/scores/test.plda",
                   train_embeddings="exp/x/embeddings/train/xvector.scp", utt2spk="data/train/utt2spk",
                   lda_dim=200, score_norm="asnorm", cohort_top_n=300)           # -> number of trials scored
    fit = calibrate_file("linear", "data/valid/trials", "exp/x/scores/valid.plda",
                         "exp/x/scores/test.plda", "exp/x/scores/test.plda.llr")  # -> {"method": ..., weights}
    write_source_ids("data/test/utt_map", "exp/x/scores/test.plda", "exp/x/scores/test.plda.source_ids")
    fit = fuse_files("data/valid/trials", ["exp/x/scores/valid.cosine", "exp/x/scores/valid.plda"],
                     ["exp/x/scores/test.cosine", "exp/x/scores/test.plda"], "exp/x/scores/test.fusion",
                     prior=0.5)                                            # -> {"weights": [...], "offset": ...}

upmp.bin.score / calibrate / map_score_ids / fuse call these once per file; stage 4 (upmp.scoring.stage)
calls them for every system in one process. Outputs are written atomically.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np

from upmp.data.trials import read_kaldi_trials
from upmp.errors import ConfigError, DataDirError, ScoringError
from upmp.fileio import atomic_write_text
from upmp.scoring.calibration import (CALIBRATION_METHODS, LinearCalibration, LinearFusion, QualityCalibration,
                                      check_prior, read_quality, trial_quality)
from upmp.scoring.io import (align_scores, labelled_matrix, load_embeddings, load_trials, map_score_ids,
                             read_score_lines, system_scores, write_scores)
from upmp.scoring.scorers import build_scorer, score_trials, speaker_means

logger = logging.getLogger(__name__)


def check_score_args(method: str, train_embeddings: Optional[str], utt2spk: Optional[str],
                     subtract_mean: bool = False, score_norm: str = "none", cohort: Optional[str] = None) -> bool:
    """Whether scoring needs the training embeddings (PLDA, mean subtraction, the default cohort);
    an error when they are needed and not given."""
    needs_train = method == "plda" or subtract_mean or (score_norm != "none" and not cohort)
    if needs_train and not (train_embeddings and utt2spk):
        raise ConfigError(f"--method {method} / --subtract_mean / --score_norm {score_norm} need "
                          f"--train_embeddings and --utt2spk")
    return needs_train


def score_file(method: str, embeddings: str, trials: str, out: str, train_embeddings: Optional[str] = None,
               utt2spk: Optional[str] = None, lda_dim: int = 200, subtract_mean: bool = False,
               score_norm: str = "none", cohort_top_n: int = 300, cohort: Optional[str] = None,
               cache: Optional[Dict[tuple, object]] = None) -> int:
    """Score the Kaldi `trials` with the embeddings of the scp `embeddings`; write `<utt1> <utt2> <score>`
    lines in trial order to `out`. PLDA, mean subtraction and the default normalisation cohort (the
    training speakers' mean embeddings) come from `train_embeddings` (speakers from `utt2spk`).
    `cache` (a dict) keeps embedding files and scorers fitted on the training embeddings across calls,
    so stage 4 reads each scp once and fits PLDA once for all its sets and norms. Returns the number
    of trials."""
    needs_train = check_score_args(method, train_embeddings, utt2spk, subtract_mean, score_norm, cohort)
    cache = {} if cache is None else cache

    def load(scp: str) -> Dict[str, np.ndarray]:
        if ("embeddings", scp) not in cache:
            cache[("embeddings", scp)] = load_embeddings(scp)
        return cache[("embeddings", scp)]

    t0 = time.time()
    pairs = load_trials(trials)
    emb = load(embeddings)
    cohort_matrix = None
    if needs_train:
        key = ("fit", method, lda_dim, subtract_mean, train_embeddings, utt2spk)
        if key not in cache:  # the fitted scorer and the training speakers' means
            X, labels = labelled_matrix(load(train_embeddings), utt2spk, train_embeddings)
            cache[key] = (build_scorer(method, lda_dim, subtract_mean).fit(X, labels), speaker_means(X, labels))
        scorer, means = cache[key]
        if score_norm != "none" and not cohort:
            cohort_matrix = means
    else:
        scorer = build_scorer(method, lda_dim, subtract_mean)
    if cohort:
        cohort_matrix = np.stack(list(load(cohort).values()))
    scores = score_trials(scorer, emb, pairs, source=embeddings, cohort=cohort_matrix, norm=score_norm,
                          top_n=cohort_top_n)
    write_scores(out, pairs, scores)
    logger.debug("scored %d trials (%s, norm %s) in %.1f s -> %s", len(pairs), method, score_norm,
                 time.time() - t0, out)
    return len(pairs)


def calibrate_file(method: str, dev_trials: str, dev_scores: str, scores: str, out: str,
                   dev_embeddings: Optional[str] = None, embeddings: Optional[str] = None) -> dict:
    """Fit `method` (linear: llr = w * score + b; qmf: the score plus log durations and embedding
    norms of both sides, from stage 3's embeddings dirs) on the dev trials and scores, write `scores`
    mapped through the fit to `out` (`<utt1> <utt2> <llr>`); returns the fit as
    {"method": method, <weights>} (what upmp.bin.calibrate prints as JSON)."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r} ({', '.join(CALIBRATION_METHODS)})")
    if method == "qmf" and not (dev_embeddings and embeddings):
        raise DataDirError("--method qmf needs --dev_embeddings and --embeddings (stage 3's embeddings dirs)")
    dev, labels = align_scores(dev_trials, dev_scores)
    # each line is mapped as it is (a trial its list repeats keeps its lines); metrics align them to the list
    lines = read_score_lines(scores)
    test_pairs, test = [(a, b) for a, b, _, _ in lines], np.array([v for _, _, v, _ in lines])
    if method == "linear":
        cal = LinearCalibration.fit(dev, labels, source=dev_trials)
        llr = cal(test)
        described = {"scale": cal.scale, "offset": cal.offset}
    else:
        pairs = [(a, b) for a, b, _ in read_kaldi_trials(dev_trials)]
        dev_q = trial_quality(pairs, read_quality(dev_embeddings), f" in {dev_embeddings}")
        cal = QualityCalibration.fit(dev, dev_q, labels, source=dev_trials)
        test_q = trial_quality(test_pairs, read_quality(embeddings), f" in {embeddings}")
        llr = cal(test, test_q)
        described = cal.describe()
    write_scores(out, test_pairs, llr)
    return {"method": method, **described}


def fuse_files(dev_trials: str, dev_scores: Sequence[str], scores: Sequence[str], out: str, prior: float = 0.5,
               trials: Optional[str] = None) -> dict:
    """Fit a linear fusion (LinearFusion: llr = w . s + b, prior-weighted at `prior`) on the K systems'
    `dev_scores` of the `dev_trials`, write the fused LLRs of their `scores` to `out` in the trial order
    of `trials` (default: of the first score file). Every score file of a side must score the same
    trials (upmp.scoring.io.system_scores). Returns the fit as {"method": "linear_fusion", "prior",
    "systems", "weights", "offset"} (what upmp.bin.fuse prints as JSON)."""
    check_prior(prior)
    if len(dev_scores) != len(scores):
        raise ConfigError(f"fusion: {len(dev_scores)} validation score files for {len(scores)} systems; give one "
                          f"per system, in the same order")
    if len(scores) < 2:
        raise ConfigError("fusion needs at least two systems (one system alone: calibrate it, upmp.bin.calibrate)")
    for files in (dev_scores, scores):
        twice = [f for i, f in enumerate(files) if f in files[:i]]
        if twice:
            raise ConfigError(f"fusion: {twice[0]} is given twice; give each system once")
    inputs = [dev_trials, *dev_scores, *scores, *([trials] if trials else [])]
    clobbered = [f for f in inputs if os.path.realpath(f) == os.path.realpath(out)]
    if clobbered:
        raise ConfigError(f"fusion: --out {out} is also an input ({clobbered[0]}); write the fused scores to a new file")
    dev = load_trials(dev_trials)
    labels = np.array([t for _, _, t in dev], dtype=bool)
    fusion = LinearFusion.fit(system_scores([(a, b) for a, b, _ in dev], dev_scores, dev_trials), labels, prior,
                              source=dev_trials)
    if trials:
        pairs, reference = [(a, b) for a, b, _ in load_trials(trials)], trials
    else:
        pairs, reference = [(a, b) for a, b, _, _ in read_score_lines(scores[0])], scores[0]
        if not pairs:
            raise ScoringError(f"{scores[0]}: no scores (the file is empty); score the trials first")
    write_scores(out, pairs, fusion(system_scores(pairs, scores, reference)))
    return {"method": "linear_fusion", "prior": prior, "systems": list(scores), "weights": fusion.weights,
            "offset": fusion.offset}


def write_source_ids(utt_map: str, scores: str, out: str) -> None:
    """`scores` with its utterance ids mapped through an imported set's utt_map (`<our id> <source id>`)."""
    atomic_write_text(out, "".join(map_score_ids(scores, utt_map)))
