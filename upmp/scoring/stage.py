"""Stage 4 of sv.sh: score every (set, method, norm) system, calibrate it, keep what is up to date.

    results = score_sets("exp/upmp_wavlm", "data", "train", "valid", ["test"], methods=["cosine", "plda"],
                         norms=["none", "asnorm"], lda_dim=200, cohort_top_n=300, calibration=["linear", "qmf"],
                         fusion=["cosine", "plda"])
    # -> [("exp/upmp_wavlm/scores/valid.cosine", "up to date"), ("exp/.../test.plda.asnorm", "scored"), ...]

Files of a system `<exp>/scores/<set>.<system>` (system: `<method>[.<norm>]`, norm none leaves no suffix):
    <scores>                     `<utt1> <utt2> <score>` of data/<set>/trials
    <scores>.llr                 linear calibration on the validation set's scores (test sets only)
    <scores>.qmf                 quality-aware calibration (test sets only), its own system in RESULTS.md
    <scores>.calibration.json    the linear fit; <scores>.qmf.calibration.json the QMF fit
    <scores>.source_ids          the scores under the source's ids (imported sets with data/<set>/utt_map)
    <scores>.opts                the scoring options the system used ("--lda_dim N", "--cohort_top_n N")
    <scores>.done                the done-record: what the files above were made from (written last)

With `fusion` (two or more of the systems, a validation set needed), every test set also gets the system
`fusion`: <exp>/scores/<set>.fusion holds the LLRs of a linear logistic-regression fusion of those systems
fitted on the validation set's scores (upmp.scoring.files.fuse_files); <set>.fusion.json the fit and
<set>.fusion.opts the systems fused. It is up to date while <set>.fusion.done records the score files
it fuses as they are, the same systems, and its outputs.

A system is up to date (skipped) while its done-record <scores>.done (upmp.done) matches: the set's
and the training set's xvector.scp, data/<set>/trials, the training utt2spk and data/<set>/utt_map
(these two by content), the validation set's scores of the same system (test sets) as they were, the options asked for now (so a
changed --lda_dim rescores only PLDA), and the files written, each still as written. Otherwise the
system is scored, calibrated, its ids mapped, .opts and the record written last (an interrupted
system's rewritten files no longer match its record: scored again; so is a system scored before the
records, with the same numbers).
The validation set is scored first, so test sets calibrate on its current scores. Everything runs in
this process.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


from upmp.done import done_path, is_done, snapshot, write_done
from upmp.errors import ConfigError
from upmp.fileio import atomic_write_text
from upmp.scoring.calibration import CALIBRATION_METHODS
from upmp.scoring.files import calibrate_file, fuse_files, score_file, write_source_ids
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


@dataclass
class _Run:
    """What every system of one stage-4 run shares."""
    exp: Path
    data: Path
    train_set: str
    valid_set: Optional[str]
    lda_dim: int
    cohort_top_n: int
    calibration: Sequence[str]
    cache: Dict[tuple, object] = field(default_factory=dict)  # embedding files and fitted scorers (score_file)

    def xvectors(self, s: str) -> Path:
        return self.exp / "embeddings" / s / "xvector.scp"

    def scores(self, s: str, system: System) -> Path:
        return self.exp / "scores" / f"{s}.{system.name}"


def score_sets(exp_dir: str, data_root: str, train_set: str, valid_set: Optional[str], test_sets: Sequence[str],
               methods: Sequence[str], norms: Sequence[str], lda_dim: int = 200, cohort_top_n: int = 300,
               calibration: Sequence[str] = ("linear",), fusion: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """Stage 4 (see the module docstring): (scores path, "scored" | "fused" | "up to date") per system,
    in order (the fusion of each test set last)."""
    for value, known, what in ((methods, SCORING_METHODS, "scoring"), (norms, SCORE_NORMS, "score_norm"),
                               (calibration, CALIBRATION_METHODS, "calibration")):
        for v in value:
            if v not in known:
                raise ConfigError(f"unknown --{what} {v} ({', '.join(known)})")
    check_fusion(fusion, [System("", m, n).name for m in methods for n in norms], valid_set)
    run = _Run(Path(exp_dir), Path(data_root), train_set, valid_set, lda_dim, cohort_top_n, calibration)
    (run.exp / "scores").mkdir(parents=True, exist_ok=True)
    done = []
    for s in ([valid_set] if valid_set else []) + list(test_sets):  # validation first: test sets calibrate on it
        for m in methods:
            for n in norms:
                system = System(s, m, n)
                done.append((str(run.scores(s, system)), _score_system(run, system)))
    if fusion:
        for s in test_sets:
            done.append((str(run.exp / "scores" / f"{s}.fusion"), _fuse(run, s, fusion)))
    return done


def check_fusion(fusion: Sequence[str], systems: Sequence[str], valid_set: Optional[str]) -> None:
    """--fusion: two or more different systems among those scored, and a validation set to fit on."""
    if not fusion:
        return
    for name in fusion:
        if name not in systems:
            raise ConfigError(f"--fusion {' '.join(fusion)}: {name} is not a system scored here "
                              f"({', '.join(systems)}); fuse systems of --scoring / --score_norm")
    if len(set(fusion)) != len(fusion) or len(fusion) < 2:
        raise ConfigError(f"--fusion {' '.join(fusion)}: give two or more different systems (e.g. cosine plda)")
    if not valid_set:
        raise ConfigError(f"--fusion {' '.join(fusion)} needs --valid_set: the fusion is fitted on its trials")


def _fuse(run: _Run, s: str, fusion: Sequence[str]) -> str:
    """<set>.fusion of the systems `fusion` (module docstring), unless up to date."""
    out = run.exp / "scores" / f"{s}.fusion"
    systems = [System(s, *(name.split(".", 1) if "." in name else (name, "none"))) for name in fusion]
    scores = [run.scores(s, x) for x in systems]
    dev_scores = [run.scores(run.valid_set, x) for x in systems]
    opts, opts_file = "--systems " + " ".join(fusion), Path(f"{out}.opts")
    record = (done_path(out), scores + dev_scores + [run.data / run.valid_set / "trials", run.data / s / "trials"],
              {"systems": list(fusion)}, [out, Path(f"{out}.json"), opts_file])
    if is_done(*record):
        logger.info("%s is up to date, skipping", out)
        return "up to date"
    seen = snapshot(record[1])  # before the inputs are read: one changed meanwhile writes no record
    fit = fuse_files(str(run.data / run.valid_set / "trials"), [str(p) for p in dev_scores], [str(p) for p in scores],
                     str(out), trials=str(run.data / s / "trials"))
    fit["systems"] = list(fusion)
    atomic_write_text(f"{out}.json", json.dumps(fit) + "\n")
    atomic_write_text(str(opts_file), opts + "\n")
    write_done(*record, seen=seen)
    logger.info("%s fused: %s, weights %s, offset %.3f (fitted on %s)", out, " + ".join(fusion),
                " ".join(f"{w:.3f}" for w in fit["weights"]), fit["offset"], run.valid_set)
    return "fused"


def _score_system(run: _Run, system: System) -> str:
    s, scores = system.set, run.scores(system.set, system)
    opts = system.opts(run.lda_dim, run.cohort_top_n)
    # test sets are calibrated on the validation set's scores of the same system
    calibrated = ([(c, Path(f"{scores}{SUFFIX[c]}")) for c in run.calibration]
                  if run.valid_set and s != run.valid_set else [])
    dev_scores = run.scores(run.valid_set, system) if run.valid_set else None
    opts_file = Path(f"{scores}.opts")
    utt_map = run.data / s / "utt_map"
    # a newer trial list rescores (convert_trials keeps an unchanged list's mtime); stage 0 rewrites the tables
    hashed = [run.data / run.train_set / "utt2spk", utt_map]
    inputs = [run.xvectors(s), run.xvectors(run.train_set), run.data / s / "trials"] + hashed
    inputs += [dev_scores] if calibrated else []
    outputs = [scores] + [out for _, out in calibrated]
    outputs += [Path(f"{out}.calibration.json" if c == "qmf" else f"{scores}.calibration.json") for c, out in calibrated]
    outputs += [Path(f"{scores}.source_ids")] if utt_map.is_file() else []
    record = (done_path(scores), inputs, {"options": opts}, outputs + [opts_file], hashed)
    if is_done(*record):
        logger.info("%s is up to date, skipping", scores)
        return "up to date"
    seen = snapshot(inputs, hashed)  # before the inputs are read: one changed meanwhile writes no record
    t0 = time.time()
    n = score_file(system.method, str(run.xvectors(s)), str(run.data / s / "trials"), str(scores),
                   str(run.xvectors(run.train_set)), str(run.data / run.train_set / "utt2spk"), lda_dim=run.lda_dim,
                   score_norm=system.norm, cohort_top_n=run.cohort_top_n, cache=run.cache)
    for method, out in calibrated:  # qmf: quality measures from stage 3's embeddings dirs
        fit = calibrate_file(method, str(run.data / run.valid_set / "trials"), str(dev_scores), str(scores), str(out),
                             str(run.xvectors(run.valid_set).parent), str(run.xvectors(s).parent))
        fit_json = f"{out}.calibration.json" if method == "qmf" else f"{scores}.calibration.json"
        atomic_write_text(fit_json, json.dumps(fit) + "\n")
    if utt_map.is_file():  # imported ids renamed for Kaldi's sort rule: the user's ids too
        write_source_ids(str(utt_map), str(scores), f"{scores}.source_ids")
    atomic_write_text(str(opts_file), opts + "\n")
    write_done(*record, seen=seen)
    logger.info("%s scored: %d trials%s%s in %.1f s", scores, n,
                f", calibrated ({' '.join(c for c, _ in calibrated)}) on {run.valid_set}" if calibrated else "",
                ", source ids mapped" if utt_map.is_file() else "", time.time() - t0)
    return "scored"
