import json

import kaldiio
import numpy as np
import pytest

import forkserver  # test/forkserver.py

from upmp.data.kaldi_dir import DataDirError
from upmp.metrics import compute_eer
from upmp.scoring.calibration import LinearCalibration, actual_dcf, cllr
from upmp.scoring.normalization import cohort_stats
from upmp.scoring.plda import PLDA
from upmp.scoring.scorers import CosineScorer, PLDAScorer, score_trials, speaker_means


def test_cosine_against_hand_values():
    emb = {"a": np.array([1.0, 0.0]), "b": np.array([3.0, 3.0]), "c": np.array([0.0, -2.0])}
    s = score_trials(CosineScorer(), emb, [("a", "b", True), ("a", "c", False), ("b", "b", True)])
    np.testing.assert_allclose(s, [1 / np.sqrt(2), 0.0, 1.0])


def test_mean_subtraction():
    emb = {"a": np.array([2.0, 1.0]), "b": np.array([1.0, 2.0])}
    scorer = CosineScorer(subtract_mean=True).fit(np.array([[0.0, 0.0], [2.0, 2.0]]))
    np.testing.assert_allclose(score_trials(scorer, emb, [("a", "b", True)]), [0.0], atol=1e-12)
    np.testing.assert_allclose(score_trials(CosineScorer(), emb, [("a", "b", True)]), [0.8])


def test_missing_embedding_named():
    with pytest.raises(DataDirError, match=r"x.scp: no embedding for trial utterance 'zz'"):
        score_trials(CosineScorer(), {"a": np.ones(2)}, [("a", "zz", True)], source="x.scp")


def two_cov_model(d, seed):
    rng = np.random.default_rng(seed)
    A, C = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    return rng, rng.normal(size=d), A @ A.T / d * 1.5, C @ C.T / d + 0.5 * np.eye(d)


def sample_speakers(rng, mu, Sb, Sw, n_spk, per_spk):
    y = rng.multivariate_normal(mu, Sb, size=n_spk)
    X = np.repeat(y, per_spk, axis=0) + rng.multivariate_normal(np.zeros(len(mu)), Sw, size=n_spk * per_spk)
    return X, np.repeat(np.arange(n_spk), per_spk)


def true_llr(x1, x2, mu, Sb, Sw):
    """The two-covariance LLR from full Gaussian densities of the pair (independent of PLDA's algebra)."""
    from scipy.stats import multivariate_normal as mvn
    d = len(mu)
    St = Sb + Sw
    joint = np.block([[St, Sb], [Sb, St]])
    z = np.hstack([x1 - mu, x2 - mu])
    return (mvn(np.zeros(2 * d), joint).logpdf(z) - mvn(np.zeros(d), St).logpdf(x1 - mu)
            - mvn(np.zeros(d), St).logpdf(x2 - mu))


def test_plda_closed_form_equals_gaussian_llr():
    rng, mu, Sb, Sw = two_cov_model(5, 0)
    plda = PLDA(mean=mu, between=Sb, within=Sw)
    x1, x2 = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    expected = np.array([true_llr(a, b, mu, Sb, Sw) for a, b in zip(x1, x2)])
    np.testing.assert_allclose(plda.score_pairs(plda.project(x1), plda.project(x2)), expected, rtol=1e-6, atol=1e-6)
    M = plda.score_matrix(plda.project(x1[:4]), plda.project(x2))
    np.testing.assert_allclose(M[2, 2], expected[2], rtol=1e-6)


def test_plda_em_oracle():
    """Trained on samples of a known model, PLDA's EER comes close to the true LLR's EER."""
    rng, mu, Sb, Sw = two_cov_model(10, 1)
    X, labels = sample_speakers(rng, mu, Sb, Sw, 500, 6)
    plda = PLDA().fit(X, labels, num_iters=20)
    Xt, _ = sample_speakers(rng, mu, Sb, Sw, 2000, 2)
    enroll, test = Xt[0::2], Xt[1::2]
    e = np.vstack([enroll, enroll])
    t = np.vstack([test, np.roll(test, 1, axis=0)])
    target = np.r_[np.ones(2000), np.zeros(2000)].astype(bool)
    oracle = PLDA(mean=mu, between=Sb, within=Sw)
    eer_true = compute_eer(oracle.score_pairs(oracle.project(e), oracle.project(t)), target)
    eer = compute_eer(plda.score_pairs(plda.project(e), plda.project(t)), target)
    assert 0.03 < eer_true < 0.3  # a task that is neither trivial nor hopeless
    assert abs(eer - eer_true) < 0.01
    np.testing.assert_allclose(plda.within, Sw, atol=0.15)


def test_plda_scorer_pipeline_separates_speakers():
    rng, mu, Sb, Sw = two_cov_model(16, 2)
    X, labels = sample_speakers(rng, mu, Sb * 10, Sw, 60, 8)
    scorer = PLDAScorer(lda_dim=8).fit(X, labels)
    assert scorer.lda.transform(X[:2]).shape == (2, 8)
    emb = {f"s{s}-{i}": x for i, (x, s) in enumerate(zip(*sample_speakers(rng, mu, Sb * 10, Sw, 30, 2)))}
    keys = sorted(emb, key=lambda k: int(k.split("-")[1]))
    trials = [(keys[i], keys[i + 1], True) for i in range(0, 60, 2)] + \
             [(keys[i], keys[(i + 3) % 60], False) for i in range(0, 60, 2)]
    s = score_trials(scorer, emb, trials)
    assert compute_eer(s, np.array([t for *_, t in trials])) < 0.1
    with pytest.raises(ValueError, match="at least two speakers"):
        PLDAScorer().fit(X[:3], [0, 0, 0])


def test_snorm_equals_its_definition():
    emb = {"e": np.array([1.0, 0.2, 0.0]), "t": np.array([0.5, 1.0, 0.3])}
    cohort = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    trials = [("e", "t", True)]
    scorer = CosineScorer()
    raw = score_trials(scorer, emb, trials)[0]
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    ce = np.array([cos(emb["e"], c) for c in cohort])
    ct = np.array([cos(emb["t"], c) for c in cohort])
    expected = 0.5 * ((raw - ce.mean()) / ce.std() + (raw - ct.mean()) / ct.std())
    assert score_trials(scorer, emb, trials, cohort=cohort, norm="snorm")[0] == pytest.approx(expected)
    # AS-norm with top-2: statistics of the two highest cohort scores of each side
    te, tt = np.sort(ce)[-2:], np.sort(ct)[-2:]
    expected = 0.5 * ((raw - te.mean()) / te.std() + (raw - tt.mean()) / tt.std())
    assert score_trials(scorer, emb, trials, cohort=cohort, norm="asnorm", top_n=2)[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs a cohort"):
        score_trials(scorer, emb, trials, norm="snorm")


def test_cohort_stats_chunking_and_top_n_larger_than_cohort():
    rng = np.random.default_rng(0)
    R, C = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
    scorer = CosineScorer()
    a = cohort_stats(scorer, scorer.prepare(R), scorer.prepare(C), top_n=100, chunk=8)
    b = cohort_stats(scorer, scorer.prepare(R), scorer.prepare(C), top_n=None, chunk=1000)
    np.testing.assert_allclose(a, b)


def test_speaker_means():
    X = np.array([[2.0, 0], [0, 3.0], [0, -1.0]])
    np.testing.assert_allclose(speaker_means(X, ["b", "b", "a"]), [[0, -1.0], [0.5, 0.5]])


def test_calibration_cllr_actdcf():
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.5
    # scores = 3 * true_llr + 5, true llr of two unit Gaussians at +-1 is 2x
    x = np.where(labels, rng.normal(1, 1, 4000), rng.normal(-1, 1, 4000))
    raw = 3 * (2 * x) + 5
    cal = LinearCalibration.fit(raw, labels)
    assert cal.scale == pytest.approx(1 / 3, rel=0.1) and cal.offset == pytest.approx(-5 / 3, abs=0.3)
    llr = cal(raw)
    assert cllr(llr, labels) < cllr(raw, labels)
    assert cllr(np.zeros(10), np.r_[np.ones(5), np.zeros(5)].astype(bool)) == pytest.approx(1.0)
    # hand case: one target at llr 0.5, one nontarget at llr 3 with P_tar 0.5 (threshold 0): 1 fa
    assert actual_dcf(np.array([0.5, 3.0]), np.array([True, False]), 0.5) == pytest.approx(1.0)
    assert actual_dcf(np.array([0.5, -3.0]), np.array([True, False]), 0.01) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="target and nontarget"):
        LinearCalibration.fit(raw[:3], np.ones(3, dtype=bool))


def run(*args):
    return forkserver.run(*args)


def test_score_and_metrics_cli_on_kaldi_files(tmp_path):
    rng = np.random.default_rng(0)
    spk = {f"s{i}": rng.normal(size=16) for i in range(4)}
    emb = {f"s{i}-u{j}": spk[f"s{i}"] + 0.3 * rng.normal(size=16) for i in range(4) for j in range(3)}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/x.ark,{tmp_path}/x.scp") as w:
        for k in sorted(emb):
            w(k, emb[k].astype(np.float32))
    keys = sorted(emb)
    trials = [(a, b, a.split("-")[0] == b.split("-")[0]) for i, a in enumerate(keys) for b in keys[i + 1:]]
    (tmp_path / "trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))
    r = run("upmp.bin.score", "--embeddings", f"{tmp_path}/x.scp", "--trials", f"{tmp_path}/trials",
            "--out", f"{tmp_path}/scores")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "scores").read_text().splitlines()
    assert len(lines) == len(trials)
    a, b, s = lines[0].split()
    expected = emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
    assert (a, b) == trials[0][:2] and float(s) == pytest.approx(expected, abs=1e-5)
    r = run("upmp.bin.compute_metrics", "--trials", f"{tmp_path}/trials", "--scores", f"{tmp_path}/scores", "--json")
    m = json.loads(r.stdout)
    assert set(m) == {"eer", "mindcf_0.01", "mindcf_0.05", "n_target", "n_nontarget"}
    assert (m["n_target"], m["n_nontarget"]) == (12, 54) and m["eer"] < 10
    r = run("upmp.bin.compute_metrics", "--trials", f"{tmp_path}/trials", "--scores", f"{tmp_path}/scores")
    assert "EER:" in r.stdout and "linear interpolation" in r.stdout and "minDCF (P_tar=0.01)" in r.stdout


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "trials").write_text("a b target\nc d maybe\n")
    r = run("upmp.bin.compute_metrics", "--trials", f"{tmp_path}/trials", "--scores", f"{tmp_path}/missing")
    assert r.returncode == 1 and f"--scores {tmp_path}/missing: no such file" in r.stderr
    (tmp_path / "empty").write_text("")
    r = run("upmp.bin.compute_metrics", "--trials", f"{tmp_path}/trials", "--scores", f"{tmp_path}/empty")
    assert r.returncode == 1 and f"{tmp_path}/trials:2: expected '<utt1> <utt2> target|nontarget'" in r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "trials").write_text("a b target\nc d nontarget\n")
    (tmp_path / "scores").write_text("a b 0.5\n")
    r = run("upmp.bin.compute_metrics", "--trials", f"{tmp_path}/trials", "--scores", f"{tmp_path}/scores")
    assert r.returncode == 1 and "trials:2: trial 'c d' has no score" in r.stderr
