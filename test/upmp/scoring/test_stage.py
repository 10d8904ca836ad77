"""Stage 4 in one process (upmp.scoring.stage / upmp.bin.score_sets): the files it writes equal what the
single-file entry points write, and its make-like freshness rules rescore exactly what changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
SYSTEMS = ["cosine", "cosine.asnorm", "plda", "plda.asnorm"]


def write_xvectors(d: Path, emb: dict, durations: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with kaldiio.WriteHelper(f"ark,scp:{d}/xvector.ark,{d}/xvector.scp") as w:
        for k in sorted(emb):
            w(k, emb[k].astype(np.float32))
    (d / "utt2dur").write_text("".join(f"{u} {durations[u]:.3f}\n" for u in sorted(emb)))


@pytest.fixture
def exp(tmp_path):
    """An experiment after stage 3: train (6 speakers), valid and test sets with trials; test imported
    (an utt_map to the source's ids)."""
    rng = np.random.default_rng(0)
    data, exp = tmp_path / "data", tmp_path / "exp"
    for name, n_spk, per in (("train", 6, 4), ("valid", 3, 3), ("test", 3, 3)):
        spk = {f"{name}{i}": rng.normal(size=8) for i in range(n_spk)}
        emb = {f"{s}-u{j}": spk[s] + 0.5 * rng.normal(size=8) for s in spk for j in range(per)}
        write_xvectors(exp / "embeddings" / name, emb, {u: rng.uniform(1, 5) for u in emb})
        (data / name).mkdir(parents=True)
        (data / name / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(emb)))
        keys = sorted(emb)
        (data / name / "trials").write_text("".join(
            f"{a} {b} {'target' if a.split('-')[0] == b.split('-')[0] else 'nontarget'}\n"
            for i, a in enumerate(keys) for b in keys[i + 1:]))
        if name == "test":
            (data / name / "utt_map").write_text("".join(f"{u} src_{u}\n" for u in keys))
    return exp


def run(exp: Path, *extra: str):
    return subprocess.run(
        [sys.executable, "-m", "upmp.bin.score_sets", "--exp_dir", str(exp), "--data_root", str(exp.parent / "data"),
         "--train_set", "train", "--valid_set", "valid", "--test_sets", "test", "--scoring", "cosine", "plda",
         "--score_norm", "none", "asnorm", "--lda_dim", "4", "--cohort_top_n", "3", "--calibration", "linear", "qmf",
         *extra], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def cli(module: str, *args) -> str:
    r = subprocess.run([sys.executable, "-m", f"upmp.bin.{module}", *map(str, args)], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    return r.stdout


def states(stderr: str) -> dict:
    """{<set>.<system>: "scored" | "up to date"} from the one log line per system."""
    out = {}
    for line in stderr.splitlines():
        for state, marker in (("up to date", " is up to date, skipping"), ("scored", " scored: ")):
            if marker in line:
                out[line.split(marker)[0].rsplit("/", 1)[1]] = state
    return out


def mtimes(exp: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (exp / "scores").iterdir()}


def test_outputs_equal_the_single_file_entry_points(exp, tmp_path):
    r = run(exp)
    assert r.returncode == 0, r.stderr
    assert states(r.stderr) == {f"{s}.{m}": "scored" for s in ("valid", "test") for m in SYSTEMS}
    scores, emb, data = exp / "scores", exp / "embeddings", exp.parent / "data"
    names = {p.name for p in scores.iterdir()}
    expected = {f"valid.{m}{x}" for m in SYSTEMS for x in ("", ".opts", ".done")}
    expected |= {f"test.{m}{x}" for m in SYSTEMS for x in ("", ".opts", ".done", ".llr", ".calibration.json", ".qmf",
                                                             ".qmf.calibration.json", ".source_ids")}
    assert names == expected
    assert (scores / "test.plda.asnorm.opts").read_text() == "--lda_dim 4 --cohort_top_n 3\n"
    assert (scores / "test.plda.opts").read_text() == "--lda_dim 4\n"
    assert (scores / "test.cosine.opts").read_text() == "\n"
    ref = tmp_path / "ref"
    ref.mkdir()
    for m, n in (("plda", "asnorm"), ("cosine", "none")):
        system = m if n == "none" else f"{m}.{n}"
        for s in ("valid", "test"):
            cli("score", "--method", m, "--score_norm", n, "--lda_dim", 4, "--cohort_top_n", 3,
                "--embeddings", emb / s / "xvector.scp", "--trials", data / s / "trials",
                "--train_embeddings", emb / "train" / "xvector.scp", "--utt2spk", data / "train" / "utt2spk",
                "--out", ref / f"{s}.{system}")
            assert (ref / f"{s}.{system}").read_bytes() == (scores / f"{s}.{system}").read_bytes()
        common = ["--dev_trials", data / "valid" / "trials", "--dev_scores", ref / f"valid.{system}",
                  "--scores", ref / f"test.{system}"]
        fit = cli("calibrate", *common, "--out", ref / "llr")
        assert fit == (scores / f"test.{system}.calibration.json").read_text()
        assert (ref / "llr").read_bytes() == (scores / f"test.{system}.llr").read_bytes()
        fit = cli("calibrate", "--method", "qmf", *common, "--out", ref / "qmf", "--dev_embeddings", emb / "valid",
                  "--embeddings", emb / "test")
        assert fit == (scores / f"test.{system}.qmf.calibration.json").read_text()
        assert (ref / "qmf").read_bytes() == (scores / f"test.{system}.qmf").read_bytes()
        cli("map_score_ids", "--utt_map", data / "test" / "utt_map", "--scores", ref / f"test.{system}",
            "--out", ref / "ids")
        assert (ref / "ids").read_bytes() == (scores / f"test.{system}.source_ids").read_bytes()
    first = (scores / "test.cosine.source_ids").read_text().split()
    assert first[0].startswith("src_test0-") and first[1].startswith("src_")


def test_freshness_rescores_exactly_what_changed(exp):
    assert run(exp).returncode == 0
    before = mtimes(exp)
    r = run(exp)   # nothing changed: nothing rescored, nothing rewritten
    assert r.returncode == 0 and set(states(r.stderr).values()) == {"up to date"} and len(states(r.stderr)) == 8
    assert mtimes(exp) == before
    utt2spk = exp.parent / "data" / "train" / "utt2spk"   # rewritten unchanged (stage 0 again): by content
    utt2spk.write_text(utt2spk.read_text())
    os.utime(utt2spk, ns=(max(before.values()) + 1,) * 2)
    assert set(states(run(exp).stderr).values()) == {"up to date"} and mtimes(exp) == before

    r = run(exp, "--lda_dim", "3")   # only PLDA uses --lda_dim
    assert r.returncode == 0, r.stderr
    assert states(r.stderr) == {f"{s}.{m}": "plda" in m and "scored" or "up to date"
                                for s in ("valid", "test") for m in SYSTEMS}
    after = mtimes(exp)
    assert all((after[f] > before[f]) == f.split(".")[1].startswith("plda") for f in before)
    assert (exp / "scores" / "test.plda.opts").read_text() == "--lda_dim 3\n"

    trials = exp.parent / "data" / "test" / "trials"  # a newer trial list of test: test rescored, valid not
    os.utime(trials, ns=(max(after.values()) + 1,) * 2)   # newer than any score, older than the next
    r = run(exp, "--lda_dim", "3")
    assert states(r.stderr) == {f"{s}.{m}": s == "test" and "scored" or "up to date"
                                for s in ("valid", "test") for m in SYSTEMS}

    # the calibration set's scores rescored (its record gone): test's cosine recalibrated on them
    (exp / "scores" / "valid.cosine.done").unlink()
    r = run(exp, "--lda_dim", "3")
    assert states(r.stderr) == {f"{s}.{m}": m == "cosine" and "scored" or "up to date"
                                for s in ("valid", "test") for m in SYSTEMS}
    valid = exp / "scores" / "valid.cosine.asnorm"  # an output touched after its record: scored again
    os.utime(valid, ns=(max(mtimes(exp).values()) + 1,) * 2)
    r = run(exp, "--lda_dim", "3")
    assert states(r.stderr) == {f"{s}.{m}": m == "cosine.asnorm" and "scored" or "up to date"
                                for s in ("valid", "test") for m in SYSTEMS}

    (exp / "scores" / "valid.cosine.asnorm.opts").unlink()  # an output missing
    r = run(exp, "--lda_dim", "3", "--score_norm", "asnorm")
    assert states(r.stderr) == {"valid.cosine.asnorm": "scored", "valid.plda.asnorm": "up to date",
                                "test.cosine.asnorm": "scored", "test.plda.asnorm": "up to date"}


def test_bad_input_is_one_line_and_keeps_what_was_written(exp):
    assert run(exp).returncode == 0
    scores = exp / "scores"
    kept = {p.name: p.read_bytes() for p in scores.iterdir()}
    trials = exp.parent / "data" / "test" / "trials"
    trials.write_text(trials.read_text() + "test0-u0 nobody-u9 target\n")
    r = run(exp)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "exp/embeddings/test/xvector.scp: no embedding for trial utterance 'nobody-u9'" \
        in errors[0]
    assert {p.name: p.read_bytes() for p in scores.iterdir()} == kept   # valid's up to date, test's kept
    r = run(exp, "--scoring", "lda")
    assert r.returncode == 2 and "invalid choice: 'lda'" in r.stderr and not list(scores.glob("*.tmp"))


def test_each_training_file_is_read_and_each_scorer_fitted_once(exp, monkeypatch):
    """2 sets x 2 norms of PLDA and of cosine: PLDA is fitted once, every xvector.scp read once."""
    from upmp.scoring import files
    from upmp.scoring.scorers import PLDAScorer
    from upmp.scoring.stage import score_sets
    fits, reads = [], []
    fit, load = PLDAScorer.fit, files.load_embeddings
    monkeypatch.setattr(PLDAScorer, "fit", lambda self, X, labels: fits.append(len(X)) or fit(self, X, labels))
    monkeypatch.setattr(files, "load_embeddings", lambda scp: reads.append(scp) or load(scp))
    done = score_sets(str(exp), str(exp.parent / "data"), "train", "valid", ["test"], methods=["cosine", "plda"],
                      norms=["none", "asnorm"], lda_dim=4, cohort_top_n=3, calibration=["linear"])
    assert [state for _, state in done] == ["scored"] * 8
    assert fits == [24] and sorted(reads) == sorted(set(reads)) and len(reads) == 3  # train, valid, test


def test_fusion_of_two_systems_is_a_system_of_its_own(exp):
    """--fusion cosine plda.asnorm: <set>.fusion equals upmp.bin.fuse's output on the same files, RESULTS.md gets a
    fusion row with Cllr and actDCF; up to date when nothing changed, refitted when the systems fused change."""
    from upmp.errors import ConfigError
    from upmp.results import write_experiment_results
    from upmp.scoring.files import fuse_files
    from upmp.scoring.stage import score_sets
    data, scores = exp.parent / "data", exp / "scores"
    kw = dict(methods=["cosine", "plda"], norms=["none", "asnorm"], lda_dim=4, cohort_top_n=3, calibration=["linear"])
    done = score_sets(str(exp), str(data), "train", "valid", ["test"], fusion=["cosine", "plda.asnorm"], **kw)
    assert done[-1] == (str(scores / "test.fusion"), "fused") and len(done) == 9
    fit = json.loads((scores / "test.fusion.json").read_text())
    assert fit["systems"] == ["cosine", "plda.asnorm"] and fit["prior"] == 0.5
    want = fuse_files(str(data / "valid" / "trials"), [str(scores / "valid.cosine"), str(scores / "valid.plda.asnorm")],
                      [str(scores / "test.cosine"), str(scores / "test.plda.asnorm")], str(exp / "ref.fusion"),
                      trials=str(data / "test" / "trials"))
    assert (fit["weights"], fit["offset"]) == (want["weights"], want["offset"])
    assert (exp / "ref.fusion").read_bytes() == (scores / "test.fusion").read_bytes()
    summary = write_experiment_results(exp, ["cosine", "plda.asnorm", "fusion"], ["test"], data_root=str(data))
    m = summary["results"]["test/fusion"]
    assert {"eer", "mindcf_0.01", "cllr", "actdcf_0.01", "actdcf_0.05"} <= set(m) and 0 <= m["cllr"]
    row = [ln for ln in (exp / "RESULTS.md").read_text().splitlines() if ln.startswith("| test | fusion |")]
    assert row == [f"| test | fusion | {m['eer']:.2f} | {m['mindcf_0.01']:.4f} | {m['mindcf_0.05']:.4f} | "
                   f"{m['cllr']:.3f} | {m['actdcf_0.01']:.4f} | {m['n_target']} / {m['n_nontarget']} |"]

    # a system stage 4 did not score: one line naming the file and what to run; the reports stay as they were
    from upmp.errors import ScoringError
    reports = {f: (exp / f).read_bytes() for f in ("RESULTS.md", "results.json")}
    with pytest.raises(ScoringError, match=r"scores/test\.lda\.asnorm: no such score file \(system 'lda\.asnorm' of "
                                           r"test set 'test'\); run stage 4 with the same --scoring"):
        write_experiment_results(exp, ["cosine", "lda.asnorm"], ["test"], data_root=str(data))
    assert {f: (exp / f).read_bytes() for f in reports} == reports

    before = (scores / "test.fusion").stat().st_mtime_ns
    done = score_sets(str(exp), str(data), "train", "valid", ["test"], fusion=["cosine", "plda.asnorm"], **kw)
    assert {state for _, state in done} == {"up to date"} and (scores / "test.fusion").stat().st_mtime_ns == before
    done = score_sets(str(exp), str(data), "train", "valid", ["test"], fusion=["cosine", "plda"], **kw)
    assert done[-1][1] == "fused" and json.loads((scores / "test.fusion.json").read_text())["systems"] == ["cosine", "plda"]
    for fusion, valid, message in ((["cosine", "lda"], "valid", "--fusion cosine lda: lda is not a system scored here"),
                                   (["cosine"], "valid", "give two or more different systems"),
                                   (["cosine", "plda"], None, "--fusion cosine plda needs --valid_set")):
        with pytest.raises(ConfigError, match=message):
            score_sets(str(exp), str(data), "train", valid, ["test"], fusion=fusion, **kw)


def test_an_input_changed_while_scoring_leaves_no_record(exp, monkeypatch, caplog):
    """The test trials rewritten while they are scored: the scores are made from the old list, so they get
    no record (one warning) and the next run scores them again."""
    from upmp.scoring import stage
    trials = exp.parent / "data" / "test" / "trials"
    score = stage.score_file

    def rewriting(method, xvectors, trials_file, *args, **kwargs):
        n = score(method, xvectors, trials_file, *args, **kwargs)
        if trials_file == str(trials):
            os.utime(trials, ns=(trials.stat().st_mtime_ns + 10**9,) * 2)
        return n
    monkeypatch.setattr(stage, "score_file", rewriting)
    args = (str(exp), str(exp.parent / "data"), "train", "valid", ["test"])
    kw = dict(methods=["cosine"], norms=["none"], lda_dim=4, cohort_top_n=3, calibration=["linear"])
    assert [state for _, state in stage.score_sets(*args, **kw)] == ["scored", "scored"]
    assert not (exp / "scores" / "test.cosine.done").exists() and (exp / "scores" / "valid.cosine.done").exists()
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [
        f"{trials} changed while the stage ran: not writing {exp}/scores/test.cosine.done "
        "(the next run redoes the stage)"]
    monkeypatch.setattr(stage, "score_file", score)
    assert [state for _, state in stage.score_sets(*args, **kw)] == ["up to date", "scored"]
    assert [state for _, state in stage.score_sets(*args, **kw)] == ["up to date", "up to date"]
