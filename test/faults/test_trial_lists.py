"""Trial lists that repeat lines or list pairs in both orders (issue 19, "a regression found end to
end"): preparation reports them in one warning line and refuses a pair labelled both ways (naming both
lines), before any extraction or training; scoring and every metric take the list as given (a repeated
trial counts as often as it is listed), so stage 4 and 5 never refuse it later."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import write_data_dir
from helpers import run_module as run, one_line_error

from upmp.metrics import compute_eer, compute_min_dcf
from upmp.scoring.calibration import actual_dcf, cllr

ROOT = Path(__file__).resolve().parents[2]


def warnings_of(r):
    return [ln for ln in r.stderr.splitlines() if "WARNING" in ln]


def flip(line: str) -> str:
    """A VoxCeleb list line with its two files swapped (the same pair in the other order)."""
    label, a, b = line.split()
    return f"{label} {b} {a}"


def repeated_list(small_corpus, path: Path):
    """veri_test2.txt with 3 lines repeated (2 of them at once, one later again) and 4 pairs listed
    again in the other order: the hidden corpus's list, in small."""
    lines = (small_corpus / "veri_test2.txt").read_text().splitlines()
    out = lines[:10] + [lines[3]] + lines[10:] + [lines[5], lines[16]] + [flip(lines[i]) for i in (0, 7, 12, 20)]
    path.write_text("".join(f"{ln}\n" for ln in out))
    return lines, out


def test_repeats_are_reported_at_preparation_and_scored_as_listed_in_stages_4_and_5(small_corpus, tmp_path):
    import kaldiio
    lst = tmp_path / "veri_test_repeats.txt"
    lines, listed = repeated_list(small_corpus, lst)
    data = tmp_path / "data"
    r = run("upmp.bin.prepare_voxceleb1", "--root", small_corpus, "--out", data, "--trials", lst,
            "--valid_speakers", 2)
    assert r.returncode == 0, r.stderr
    warned = warnings_of(r)
    assert len(warned) == 1, r.stderr
    assert (f"{lst}: 3 repeated line(s) (first: line 11 repeats line 4," in warned[0]
            and "4 pair(s) listed in both orders (first: lines 1 and 28," in warned[0]
            and "scored as listed" in warned[0]), warned[0]
    trials_file = data / "voxceleb1_test" / "trials"
    kaldi = [ln.split() for ln in trials_file.read_text().splitlines()]
    assert len(kaldi) == len(listed) == len(lines) + 7  # the list as given
    # the data dir check of stage 0 (sv.sh: utils/validate_data_dir.sh) passes and reports them too
    r = run("upmp.bin.data_dir", "validate", data / "voxceleb1_test")
    assert r.returncode == 0, r.stderr
    assert len(warnings_of(r)) == 1 and f"{trials_file}: 3 repeated line(s)" in r.stderr, r.stderr

    # stage 3's embeddings, made up: a speaker direction plus noise
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    emb = {}
    for s in ("voxceleb1_dev", "voxceleb1_valid", "voxceleb1_test"):
        utts = [ln.split()[0] for ln in (data / s / "utt2spk").read_text().splitlines()]
        (exp / "embeddings" / s).mkdir(parents=True)
        with kaldiio.WriteHelper(f"ark,scp:{exp}/embeddings/{s}/xvector.ark,{exp}/embeddings/{s}/xvector.scp") as w:
            for u in utts:
                spk = int(u[2:7])
                v = np.random.default_rng(spk).normal(size=8) + 1.2 * rng.normal(size=8)
                emb[u] = v.astype(np.float32)
                w(u, emb[u])
    common = ["--exp_dir", exp, "--data_root", data, "--train_set", "voxceleb1_dev"]
    r = run("upmp.bin.score_sets", *common, "--valid_set", "voxceleb1_valid", "--test_sets", "voxceleb1_test",
            "--scoring", "cosine", "plda", "--score_norm", "none", "asnorm", "--lda_dim", 2, "--cohort_top_n", 2,
            "--calibration", "linear")
    assert r.returncode == 0, r.stderr  # the regression: "trial '...' is scored twice"
    systems = ["cosine", "cosine.asnorm", "plda", "plda.asnorm"]
    r = run("upmp.bin.write_results", "--exp_dir", exp, "--data_root", data, "--test_sets", "voxceleb1_test",
            "--systems", *systems)
    assert r.returncode == 0, r.stderr
    results = json.loads((exp / "results.json").read_text())
    results = results.get("results", results)

    # independent: cosine scores computed here on the expanded list; the other systems' scores of each
    # distinct trial (scored once on a list without repeats), expanded by how often the list has them
    labels = np.array([t == "target" for *_, t in kaldi])
    pairs = [(a, b) for a, b, _ in kaldi]
    assert Counter(pairs).most_common(1)[0][1] == 2
    unique = tmp_path / "unique_trials"
    unique.write_text("".join(f"{a} {b} {t}\n" for a, b, t in dict.fromkeys(map(tuple, kaldi))))
    for system in systems:
        method, _, norm = system.partition(".")
        scored = tmp_path / f"unique.{system}"
        r = run("upmp.bin.score", "--method", method, "--embeddings", exp / "embeddings/voxceleb1_test/xvector.scp",
                "--trials", unique, "--out", scored, "--train_embeddings", exp / "embeddings/voxceleb1_dev/xvector.scp",
                "--utt2spk", data / "voxceleb1_dev/utt2spk", "--lda_dim", 2, "--score_norm", norm or "none",
                "--cohort_top_n", 2)
        assert r.returncode == 0, r.stderr
        by_pair = {(a, b): float(s) for a, b, s in (ln.split() for ln in scored.read_text().splitlines())}
        scores = np.array([by_pair[p] for p in pairs])
        if system == "cosine":
            direct = np.array([emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b in pairs])
            np.testing.assert_allclose(scores, direct, atol=1e-5)
        m = results[f"voxceleb1_test/{system}"]
        assert (m["n_target"], m["n_nontarget"]) == (int(labels.sum()), int((~labels).sum()))
        assert m["eer"] == pytest.approx(100 * compute_eer(scores, labels), abs=1e-4)
        assert m["mindcf_0.01"] == pytest.approx(compute_min_dcf(scores, labels, 0.01), abs=1e-4)
        assert m["mindcf_0.05"] == pytest.approx(compute_min_dcf(scores, labels, 0.05), abs=1e-4)
        fit = json.loads((exp / "scores" / f"voxceleb1_test.{system}.calibration.json").read_text())
        llr = fit["scale"] * scores + fit["offset"]
        assert m["cllr"] == pytest.approx(cllr(llr, labels), abs=1e-3)
        assert m["actdcf_0.01"] == pytest.approx(actual_dcf(llr, labels, 0.01), abs=1e-3)
        assert m["actdcf_0.05"] == pytest.approx(actual_dcf(llr, labels, 0.05), abs=1e-3)

    # compute_metrics on the stage-4 files gives the same numbers
    r = run("upmp.bin.compute_metrics", "--trials", trials_file, "--scores", exp / "scores/voxceleb1_test.cosine.llr",
            "--llr", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["cllr"] == pytest.approx(results["voxceleb1_test/cosine"]["cllr"])
    assert m["n_target"] + m["n_nontarget"] == len(listed)


def test_a_pair_labelled_both_ways_is_refused_at_preparation(small_corpus, tmp_path):
    lines = (small_corpus / "veri_test2.txt").read_text().splitlines()
    label, a, b = lines[4].split()
    conflicting = lines + [f"{1 - int(label)} {a} {b}"]
    lst = tmp_path / "conflicting.txt"
    lst.write_text("".join(f"{ln}\n" for ln in conflicting))
    data = tmp_path / "data"
    data.mkdir()
    (data / "README").write_text("mine\n")
    r = run("upmp.bin.prepare_voxceleb1", "--root", small_corpus, "--out", data, "--trials", lst)
    a_id, b_id = (p[:-4].replace("/", "-") for p in (a, b))
    was, now = ("target", "nontarget") if label == "1" else ("nontarget", "target")
    one_line_error(r, f"{lst}:{len(conflicting)}: trial '{a_id} {b_id}' is labelled {now} here and {was} on line 5;",
                   "fix one of the two lines")
    assert sorted(p.name for p in data.iterdir()) == ["README"]  # nothing prepared, nothing lost

    # the same pair in the other order, in a Kaldi list: convert_trials and import_data_dir refuse it too
    kaldi = tmp_path / "trials.kaldi"
    kaldi.write_text("u1 u2 target\nu3 u4 nontarget\nu2 u1 nontarget\n")
    out = tmp_path / "trials"
    out.write_text("u1 u2 target\n")  # an earlier conversion: kept
    r = run("upmp.bin.convert_trials", "--format", "auto", "--input", kaldi, "--output", out)
    one_line_error(r, f"{kaldi}:3: trial 'u2 u1' is labelled nontarget here and target on line 1 "
                      "(the same pair in the other order)")
    assert out.read_text() == "u1 u2 target\n"

    # a list edited after stage 0: stage 0's validation and stage 4's scoring refuse it at once
    d = tmp_path / "set"
    d.mkdir()
    for name, text in {"utt2spk": "u1 s1\nu2 s2\n", "spk2utt": "s1 u1\ns2 u2\n", "wav.scp": "u1 a.wav\nu2 b.wav\n",
                       "trials": "u1 u2 nontarget\nu1 u2 nontarget\nu1 u2 target\n"}.items():
        (d / name).write_text(text)
    r = run("upmp.bin.data_dir", "validate", d)
    one_line_error(r, f"{d}/trials:3: trial 'u1 u2' is labelled target here and nontarget on line 1;")
    (d / "scores").write_text("u1 u2 0.5\n")
    r = run("upmp.bin.compute_metrics", "--trials", d / "trials", "--scores", d / "scores")
    one_line_error(r, f"{d}/trials:3: trial 'u1 u2' is labelled target here and nontarget on line 1;")


def test_import_data_dir_reports_repeats_in_one_line(tmp_path):
    src = write_data_dir(tmp_path / "src", {f"s{i}_u{j}": (f"s{i}", 0.5, 200 + 50 * i + j)
                                           for i in range(2) for j in range(2)})
    (src / "trials").write_text("s0_u0 s0_u1 target\ns0_u0 s1_u0 nontarget\ns0_u0 s0_u1 target\n"
                                "s1_u0 s0_u0 nontarget\n")
    r = run("upmp.bin.import_data_dir", "--src", src, "--data_root", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    warned = warnings_of(r)
    assert len(warned) == 1, r.stderr
    assert ("1 repeated line(s) (first: line 3 repeats line 1, 's0_u0 s0_u1')" in warned[0]
            and "1 pair(s) listed in both orders (first: lines 2 and 4, 's0_u0 s1_u0')" in warned[0]), warned[0]


def test_score_lines_against_the_times_a_trial_is_listed(tmp_path):
    """A trial listed twice may be scored once (its line counts twice) or twice (lines in order);
    three lines for it are refused, as two lines for a trial listed once are."""
    trials = tmp_path / "trials"
    trials.write_text("a b target\nc d nontarget\na b target\ne f nontarget\n")
    once = tmp_path / "once"
    once.write_text("a b 0.9\nc d 0.1\ne f 0.3\n")
    twice = tmp_path / "twice"
    twice.write_text("a b 0.9\nc d 0.1\na b 0.2\ne f 0.3\n")
    thrice = tmp_path / "thrice"
    thrice.write_text("a b 0.9\nc d 0.1\na b 0.2\ne f 0.3\na b 0.7\n")
    from upmp.scoring.io import align_scores
    np.testing.assert_array_equal(align_scores(str(trials), str(once))[0], [0.9, 0.1, 0.9, 0.3])
    np.testing.assert_array_equal(align_scores(str(trials), str(twice))[0], [0.9, 0.1, 0.2, 0.3])
    r = run("upmp.bin.compute_metrics", "--trials", trials, "--scores", thrice, "--json")
    one_line_error(r, f"{thrice}:5: trial 'a b' is scored 3 times (first on line 1) but its trial list lists it "
                      "2 times", "remove the extra lines")
    r = run("upmp.bin.compute_metrics", "--trials", trials, "--scores", twice, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_target"] == 2
