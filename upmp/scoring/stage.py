"""Stage 4 of sv.sh: score every (set, method, norm) system, calibrate it, keep what is up to date.

    results = score_sets("exp/upmp_wavlm", "data", "train", "valid", ["test"], methods=["cosine", "plda"],
                         norms=["none", "asnorm"], lda_dim=200, cohort_top_n=300, calibration=["linear", "qmf"])
    # -> [("exp/upmp_wavlm/scores/valid.cosine", "up to date"), ("exp/.../test.plda.asnorm", "scored"), ...]

Files of a system `<exp>/scores/<set>.<system>` (system: `<method>[.<norm>]`, norm none leaves no suffix):
    <scores>                     `<utt1> <utt2> <score>` of data/<set>/trials
    <scores>.llr                 linear calibration on the validation set's scores (test sets only)
    <scores>.qmf                 quality-aware calibration (test sets only), its own system in RESULTS.md
    <scores>.calibration.json    the linear fit; <scores>.qmf.calibration.json the QMF fit
    <scores>.source_ids          the scores under the source's ids (imported sets with data/<set>/utt_map)
    <scores>.opts                the scoring options the system used ("--lda_dim N", "--cohort_top_n N")

A system is up to date (skipped) when, as make would see it: the scores are newer than the set's and
the training set's xvector.scp and data/<set>/trials, every calibrated output is newer than the
scores and the validation set's scores of the same system, and <scores>.opts records the options
asked for now (so a changed --lda_dim rescores only PLDA). Otherwise it is scored, calibrated, its
ids mapped, and .opts written last (an interrupted system is scored again). The validation set is
scored first, so test sets calibrate on its current scores. Everything runs in this process.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from upmp.errors import ConfigError
from upmp.fileio import atomic_write_text
from upmp.scoring.calibration import CALIBRATION_METHODS
from upmp.scoring.files import calibrate_file, score_file, write_source_ids
from upmp.scoring.scorers import SCORE_NORMS, SCORING_METHODS

logger = logging.getLogger(__name__)

SUFFIX = {"linear": ".llr", "qmf": ".qmf"}


@dataclass(frozen=True)
class System:
    """One scoring method with one score normalisation on one set."""
    set: str
    method: str
    norm: str

    @property
    def name(self) -> str:
        return self.method if self.norm == "none" else f"{self.method}.{self.norm}"

    def opts(self, lda_dim: int, cohort_top_n: int) -> str:
        """The options this system's scores depend on, as recorded in <scores>.opts."""
        opts = []
        if self.method == "plda":
            opts.append(f"--lda_dim {lda_dim}")
        if self.norm == "asnorm":
            opts.append(f"--cohort_top_n {cohort_top_n}")
        return " ".join(opts)


def newer_than_all(path: Path, inputs: Sequence[Path]) -> bool:
    """`path` exists and is newer than every input that exists (the shell's `[ path -nt input ]`)."""
    if not path.is_file():
        return False
    mtime = path.stat().st_mtime_ns
    return all(not x.exists() or mtime > x.stat().st_mtime_ns for x in inputs)


def recorded_opts(path: Path) -> str:
    """The options recorded in an .opts file ("" when there is none)."""
    try:
        return path.read_text().rstrip("\n")
    except FileNotFoundError:
        return ""


def score_sets(exp_dir: str, data_root: str, train_set: str, valid_set: Optional[str], test_sets: Sequence[str],
               methods: Sequence[str], norms: Sequence[str], lda_dim: int = 200, cohort_top_n: int = 300,
               calibration: Sequence[str] = ("linear",)) -> List[Tuple[str, str]]:
    """Stage 4 (see the module docstring): (scores path, "scored" | "up to date") per system, in order."""
    for value, known, what in ((methods, SCORING_METHODS, "scoring"), (norms, SCORE_NORMS, "score_norm"),
                               (calibration, CALIBRATION_METHODS, "calibration")):
        for v in value:
            if v not in known:
                raise ConfigError(f"unknown --{what} {v} ({', '.join(known)})")
    exp, data = Path(exp_dir), Path(data_root)
    scores_dir = exp / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    embeddings = lambda s: exp / "embeddings" / s  # noqa: E731 (stage 3's dir of a set)
    loaded: Dict[str, Dict[str, np.ndarray]] = {}  # embedding files read once for all systems
    done = []
    for s in ([valid_set] if valid_set else []) + list(test_sets):
        for m in methods:
            for n in norms:
                system = System(s, m, n)
                scores = scores_dir / f"{s}.{system.name}"
                state = _score_system(system, scores, exp, data, train_set, valid_set, embeddings,
                                      system.opts(lda_dim, cohort_top_n), lda_dim, cohort_top_n, calibration, loaded)
                done.append((str(scores), state))
    return done


def _score_system(system: System, scores: Path, exp: Path, data: Path, train_set: str, valid_set: Optional[str],
                  embeddings, opts: str, lda_dim: int, cohort_top_n: int, calibration: Sequence[str],
                  loaded: Dict[str, Dict[str, np.ndarray]]) -> str:
    s = system.set
    # test sets are calibrated on the validation set's scores of the same system
    calibrated = [(c, Path(f"{scores}{SUFFIX[c]}")) for c in calibration] if valid_set and s != valid_set else []
    dev_scores = exp / "scores" / f"{valid_set}.{system.name}"
    xvectors, train_xvectors, trials = (embeddings(s) / "xvector.scp", embeddings(train_set) / "xvector.scp",
                                        data / s / "trials")
    opts_file = Path(f"{scores}.opts")
    if (all(newer_than_all(out, [scores, dev_scores]) for _, out in calibrated)
            and recorded_opts(opts_file) == opts and newer_than_all(scores, [xvectors, train_xvectors, trials])):
        logger.info("%s is up to date, skipping", scores)
        return "up to date"
    t0 = time.time()
    n = score_file(system.method, str(xvectors), str(trials), str(scores), str(train_xvectors),
                   str(data / train_set / "utt2spk"), lda_dim=lda_dim, score_norm=system.norm,
                   cohort_top_n=cohort_top_n, loaded=loaded)
    for method, out in calibrated:  # qmf: quality measures from stage 3's embeddings dirs
        fit = calibrate_file(method, str(data / valid_set / "trials"), str(dev_scores), str(scores), str(out),
                             str(embeddings(valid_set)), str(embeddings(s)))
        fit_json = f"{out}.calibration.json" if method == "qmf" else f"{scores}.calibration.json"
        atomic_write_text(fit_json, json.dumps(fit) + "\n")
    utt_map = data / s / "utt_map"
    if utt_map.is_file():  # imported ids renamed for Kaldi's sort rule: the user's ids too
        write_source_ids(str(utt_map), str(scores), f"{scores}.source_ids")
    atomic_write_text(str(opts_file), opts + "\n")
    logger.info("%s scored: %d trials%s%s in %.1f s", scores, n,
                f", calibrated ({' '.join(c for c, _ in calibrated)}) on {valid_set}" if calibrated else "",
                ", source ids mapped" if utt_map.is_file() else "", time.time() - t0)
    return "scored"

