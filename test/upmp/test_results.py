"""Stage 5's reports (upmp/results.py, upmp.bin.write_results): results.json and the RESULTS.md table
hold EER in percent, minDCF at 0.01 / 0.05, Cllr and actDCF equal to the metrics computed from
their definitions here (test/reference_metrics.py) on the same score files."""
import json

import numpy as np
import pytest

from reference_metrics import act_dcf, cllr, eer_percent, min_dcf, read_scored_trials, results_md_rows


def test_reference_metrics_on_hand_computed_cases():
    # targets .9 .8 .3, nontargets .5 .2: (P_miss, P_fa) = (0, 1) (0, 1/2) (1/3, 1/2) (1/3, 0) ...;
    # the crossing on the segment (1/3, 1/2) -> (1/3, 0) is at 1/3
    s, lab = np.array([.9, .8, .3, .5, .2]), np.array([1, 1, 1, 0, 0], bool)
    assert eer_percent(s, lab) == pytest.approx(100 / 3)
    # P_tar 0.05: at t = .8 (P_miss 1/3, P_fa 0) the cost 1/3 * 0.05 = 0.01667 is the least; / 0.05
    assert min_dcf(s, lab, 0.05) == pytest.approx(1 / 3)
    # targets 2 1, nontargets 1 0 (a tie): (P_miss, P_fa) = (0, 1) (0, 1/2) (1/2, 0) (1, 0); the
    # segment (0, 1/2) -> (1/2, 0) crosses P_miss = P_fa at 1/4
    assert eer_percent(np.array([2., 1., 1., 0.]), np.array([1, 1, 0, 0], bool)) == pytest.approx(25.0)
    # llr 0 everywhere: Cllr 1 bit; every decision at P_tar 0.01 rejects: actDCF = P_miss P_tar / P_tar = 1
    assert cllr(np.zeros(4), np.array([1, 1, 0, 0], bool)) == pytest.approx(1.0)
    assert act_dcf(np.zeros(4), np.array([1, 1, 0, 0], bool), 0.01) == pytest.approx(1.0)
    # llr +-log(3) on the right sides: each term log2(1 + 1/3)
    assert cllr(np.log([3, 3, 1 / 3]), np.array([1, 1, 0], bool)) == pytest.approx(np.log2(4 / 3))


@pytest.fixture
def scored(tmp_path):
    """data/test/trials and exp/x/scores/test.{cosine,plda} (overlapping classes, tied scores) with a
    .llr each (an affine map spanning the Bayes thresholds at 0.01 and 0.05)."""
    rng = np.random.default_rng(3)
    n = 300
    labels = rng.random(n) < 0.3
    utts = [(f"a{i:03d}", f"b{i:03d}") for i in range(n)]
    data = tmp_path / "data" / "test"
    data.mkdir(parents=True)
    (data / "trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for (a, b), t in zip(utts, labels)))
    scores_dir = tmp_path / "exp" / "x" / "scores"
    scores_dir.mkdir(parents=True)
    order = rng.permutation(n)  # score files need not follow the trials' order
    for system, shift, scale in (("cosine", 1.2, 2.5), ("plda", 2.0, 3.0)):
        s = np.round(rng.normal(size=n) + shift * labels, 1)          # ties
        llr = scale * s - 1.5
        for suffix, values in (("", s), (".llr", llr)):
            (scores_dir / f"test.{system}{suffix}").write_text(
                "".join(f"{utts[i][0]} {utts[i][1]} {values[i]:.6f}\n" for i in order))
    return tmp_path


def test_results_json_and_table_equal_independent_metrics(scored):
    from upmp.bin import write_results
    exp = scored / "exp" / "x"
    write_results.main(["--exp_dir", str(exp), "--systems", "cosine", "plda", "--data_root", str(scored / "data"),
                        "--test_sets", "test"])
    results = json.loads((exp / "results.json").read_text())["results"]
    table = results_md_rows(exp / "RESULTS.md")
    for system in ("cosine", "plda"):
        scores, labels = read_scored_trials(scored / "data/test/trials", exp / "scores" / f"test.{system}")
        llr, _ = read_scored_trials(scored / "data/test/trials", exp / "scores" / f"test.{system}.llr")
        want = {"eer": eer_percent(scores, labels), "mindcf_0.01": min_dcf(scores, labels, 0.01),
                "mindcf_0.05": min_dcf(scores, labels, 0.05), "cllr": cllr(llr, labels),
                "actdcf_0.01": act_dcf(llr, labels, 0.01), "actdcf_0.05": act_dcf(llr, labels, 0.05)}
        # not degenerate: an EER of some percent, minDCFs below 1, actDCFs neither 0 nor 1 (the cost of
        # rejecting every trial): the Bayes thresholds fall inside the LLRs' range
        assert 5 < want["eer"] < 45 and 0 < want["mindcf_0.05"] <= want["mindcf_0.01"] < 1, want
        assert all(want[k] not in (0, 1) for k in ("actdcf_0.01", "actdcf_0.05", "cllr")), want
        got = results[f"test/{system}"]
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (system, key)
        assert (got["n_target"], got["n_nontarget"]) == (labels.sum(), (~labels).sum())
        row = table["test", system]
        for cell, key, digits in zip(row, ("eer", "mindcf_0.01", "mindcf_0.05", "cllr", "actdcf_0.01"), (2, 4, 4, 3, 4)):
            assert float(cell) == pytest.approx(want[key], abs=0.51 * 10 ** -digits), (system, key, cell)
        assert row[5] == f"{labels.sum()} / {(~labels).sum()}"
