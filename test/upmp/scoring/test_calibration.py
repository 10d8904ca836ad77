"""Quality-aware calibration (QMF): a known quality effect recovered, never worse than linear on its
training list, the CLI on stage 3's embeddings dirs, and its errors."""
import json

import kaldiio
import numpy as np
import pytest

import forkserver  # test/forkserver.py

from upmp.metrics import compute_eer
from upmp.scoring.calibration import (QUALITY_MEASURES, LinearCalibration, QualityCalibration, cllr, read_quality,
                                      trial_quality)


def synthetic(seed: int, effect: float, n_utts: int = 300, n_trials: int = 6000):
    """Utterances with random log durations and norms; trial scores s = 2 * llr_true + effect * min log duration
    (short utterances push the score down: a quality effect of known size), llr_true = +-1 mean, unit variance."""
    rng = np.random.default_rng(seed)
    utts = [f"u{i:04d}" for i in range(n_utts)]
    quality = {u: np.array([rng.uniform(np.log(1.0), np.log(20.0)), rng.uniform(5.0, 15.0)]) for u in utts}
    # each pair once in one order (a pair listed both ways with random labels would be labelled both ways)
    drawn = (tuple(sorted(rng.choice(utts, 2, replace=False))) for _ in range(2 * n_trials))
    pairs = list(dict.fromkeys(drawn))[:n_trials]
    labels = rng.random(n_trials) < 0.5
    x = np.where(labels, rng.normal(1, 1, n_trials), rng.normal(-1, 1, n_trials))  # true llr = 2x
    q = trial_quality(pairs, quality)
    scores = 2 * x + effect * q[:, 0]
    return pairs, quality, q, scores, labels


def test_trial_quality_takes_min_and_max_of_both_sides():
    quality = {"a": np.array([1.0, 7.0]), "b": np.array([2.0, 3.0])}
    assert QUALITY_MEASURES == ("log_duration", "norm")
    np.testing.assert_array_equal(trial_quality([("a", "b"), ("b", "a")], quality), [[1, 2, 3, 7], [1, 2, 3, 7]])
    with pytest.raises(ValueError, match="trial 'a c': utterance 'c' has no quality measures in x"):
        trial_quality([("a", "c")], quality, " in x")


def test_qmf_recovers_a_known_quality_effect():
    _, _, q, scores, labels = synthetic(0, effect=1.5)
    cal = QualityCalibration.fit(scores, q, labels)
    # llr = 2x = s - 1.5 * min log duration: weights 1 on the score, -1.5 on min_log_duration, 0 elsewhere
    assert cal.score_weight == pytest.approx(1.0, abs=0.08)
    w = cal.describe()
    assert w["min_log_duration"] == pytest.approx(-1.5, abs=0.15)
    for name in ("max_log_duration", "min_norm", "max_norm"):
        assert abs(w[name]) < 0.1, (name, w)
    assert cal.offset == pytest.approx(0.0, abs=0.3)
    # on fresh trials from the same process: better calibrated and better ranked than the linear map
    _, _, q2, s2, l2 = synthetic(1, effect=1.5)
    linear = LinearCalibration.fit(scores, labels)
    qmf_llr, lin_llr = cal(s2, q2), linear(s2)
    assert cllr(qmf_llr, l2) < cllr(lin_llr, l2) - 0.05
    assert compute_eer(qmf_llr, l2) < compute_eer(lin_llr, l2) - 0.01
    # the true llr's Cllr is the floor; QMF comes close to it
    truth = s2 - 1.5 * q2[:, 0]
    assert cllr(qmf_llr, l2) == pytest.approx(cllr(truth, l2), abs=0.01)


@pytest.mark.parametrize("seed, effect", [(0, 0.0), (1, 0.0), (2, 0.3), (3, -1.0), (4, 2.0)])
def test_qmf_never_worse_than_linear_on_its_training_list(seed, effect):
    _, _, q, scores, labels = synthetic(seed, effect, n_trials=2000)
    qmf = QualityCalibration.fit(scores, q, labels)
    linear = LinearCalibration.fit(scores, labels)
    assert cllr(qmf(scores, q), labels) <= cllr(linear(scores), labels) + 1e-9


def test_constant_quality_measures_are_harmless():
    _, _, q, scores, labels = synthetic(0, effect=0.0, n_trials=2000)
    q[:, :2] = np.log(4.0)  # all durations equal
    qmf = QualityCalibration.fit(scores, q, labels)
    assert np.isfinite(qmf(scores, q)).all()
    assert cllr(qmf(scores, q), labels) <= cllr(LinearCalibration.fit(scores, labels)(scores), labels) + 1e-9


def write_embeddings_dir(d, quality):
    """xvector.ark/scp with vectors of the given norms and utt2dur of the given log durations (as stage 3 writes)."""
    d.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{d}/xvector.ark,{d}/xvector.scp") as w:
        for u in sorted(quality):
            w(u, np.array([quality[u][1], 0.0, 0.0], dtype=np.float32))
    (d / "utt2dur").write_text("".join(f"{u} {np.exp(quality[u][0]):.6f}\n" for u in sorted(quality)))
    return d


def run(*args):
    return forkserver.run("upmp.bin.calibrate", *map(str, args))


def test_cli_qmf_on_embeddings_dirs_and_its_errors(tmp_path):
    pairs, quality, q, scores, labels = synthetic(0, effect=1.5, n_trials=1500)
    dev_emb = write_embeddings_dir(tmp_path / "emb_dev", quality)
    trials = tmp_path / "trials"
    trials.write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for (a, b), t in zip(pairs, labels)))
    dev_scores = tmp_path / "dev.cosine"
    dev_scores.write_text("".join(f"{a} {b} {s:.6f}\n" for (a, b), s in zip(pairs, scores)))
    test_scores = tmp_path / "test.cosine"
    test_scores.write_text("".join(f"{a} {b} {s:.6f}\n" for (a, b), s in zip(pairs[:50], scores[:50])))
    out = tmp_path / "test.cosine.qmf"
    r = run("--method", "qmf", "--dev_trials", trials, "--dev_scores", dev_scores, "--dev_embeddings", dev_emb,
            "--embeddings", dev_emb, "--scores", test_scores, "--out", out)
    assert r.returncode == 0, r.stderr
    fitted = json.loads(r.stdout)
    assert fitted["method"] == "qmf" and fitted["min_log_duration"] == pytest.approx(-1.5, abs=0.2)
    got = np.array([float(line.split()[2]) for line in out.read_text().splitlines()])
    read = read_quality(str(dev_emb))
    np.testing.assert_allclose(read["u0000"], quality["u0000"], rtol=1e-5)
    cal = QualityCalibration.fit(np.round(scores, 6), trial_quality(pairs, read), labels)
    np.testing.assert_allclose(got, cal(np.round(scores[:50], 6), trial_quality(pairs[:50], read)), atol=1e-5)
    r = run("--dev_trials", trials, "--dev_scores", dev_scores, "--scores", test_scores, "--out", tmp_path / "lin")
    assert r.returncode == 0 and json.loads(r.stdout)["method"] == "linear"

    # errors: one line, exit 1, the existing output kept
    before = out.read_text()
    r = run("--method", "qmf", "--dev_trials", trials, "--dev_scores", dev_scores, "--scores", test_scores,
            "--out", out)
    assert r.returncode == 1 and "--method qmf needs --dev_embeddings and --embeddings" in r.stderr
    (dev_emb / "utt2dur").rename(dev_emb / "utt2dur.bak")
    r = run("--method", "qmf", "--dev_trials", trials, "--dev_scores", dev_scores, "--dev_embeddings", dev_emb,
            "--embeddings", dev_emb, "--scores", test_scores, "--out", out)
    assert r.returncode == 1 and "utt2dur: not found" in r.stderr and "rerun stage 3" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (dev_emb / "utt2dur.bak").rename(dev_emb / "utt2dur")
    (dev_emb / "utt2dur").write_text("".join(f"{u} 1.0\n" for u in sorted(quality)[1:]))
    r = run("--method", "qmf", "--dev_trials", trials, "--dev_scores", dev_scores, "--dev_embeddings", dev_emb,
            "--embeddings", dev_emb, "--scores", test_scores, "--out", out)
    assert r.returncode == 1 and "utterance 'u0000' has no duration" in r.stderr
    one_class = tmp_path / "one_class"
    one_class.write_text("".join(f"{a} {b} target\n" for a, b in pairs))
    r = run("--dev_trials", one_class, "--dev_scores", dev_scores, "--scores", test_scores, "--out", out)
    assert r.returncode == 1 and "needs target and nontarget trials" in r.stderr
    assert out.read_text() == before


def test_separable_small_list_gives_bounded_llrs():
    """16 trials with every target above every nontarget: the weak penalty keeps the fit finite, so
    LLRs on a fresh list stay usable (an unregularised fit runs off to scale ~1e5 and Cllr ~1e2)."""
    rng = np.random.default_rng(0)
    dev = np.r_[rng.normal(0.52, 0.02, 8), rng.normal(0.45, 0.02, 8)]
    labels = np.r_[np.ones(8), np.zeros(8)].astype(bool)
    assert dev[labels].min() > dev[~labels].max()
    test = np.r_[rng.normal(0.52, 0.04, 100), rng.normal(0.45, 0.04, 100)]
    test_labels = np.r_[np.ones(100), np.zeros(100)].astype(bool)
    linear = LinearCalibration.fit(dev, labels)
    assert 0 < linear.scale < 1e3 and cllr(linear(test), test_labels) < 1.0
    q = rng.uniform(0, 1, (16, 4))
    qmf = QualityCalibration.fit(dev, q, labels)
    assert all(np.isfinite(v) and abs(v) < 1e4 for v in qmf.describe().values())
