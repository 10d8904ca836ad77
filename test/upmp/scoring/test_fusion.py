"""Linear logistic-regression fusion (upmp.scoring.calibration.LinearFusion, upmp.scoring.files.fuse_files,
upmp.bin.fuse): the weights against an independent optimiser of the same prior-weighted objective, a
noise system weighted near zero, the file-level fusion and its errors on inputs over different trials."""
import json

import numpy as np
import pytest
from scipy.optimize import minimize

from helpers import one_line_error, run_module, snapshot
from upmp.errors import ConfigError, DataDirError
from upmp.scoring.calibration import LinearCalibration, LinearFusion, cllr
from upmp.scoring.files import fuse_files


def systems(seed: int, n: int = 3000, p_target: float = 0.3):
    """Labels and 3 correlated systems: a shared and an own noise per system around +-1, different scales."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < p_target
    truth = np.where(labels, 1.0, -1.0)
    shared = rng.normal(size=n)
    S = np.column_stack([scale * (truth + 0.8 * shared + own * rng.normal(size=n)) + shift
                         for scale, own, shift in ((1.0, 1.0, 0.0), (3.0, 1.5, 2.0), (0.2, 0.7, -0.3))])
    return S, labels


def scipy_fusion(S, labels, prior):
    """argmin over (w, b) of P * mean_tar log(1 + e^-(w.s + b + logit P)) + (1 - P) * mean_non log(1 + e^(w.s + b + logit P))
    (BOSARIS's prior-weighted cross-entropy; the LLR is w.s + b), by BFGS from zero."""
    lp = np.log(prior / (1 - prior))
    tar, non = S[labels], S[~labels]

    def objective(x):
        w, b = x[:-1], x[-1]
        return (prior * np.mean(np.logaddexp(0, -(tar @ w + b + lp)))
                + (1 - prior) * np.mean(np.logaddexp(0, non @ w + b + lp)))
    x = minimize(objective, np.zeros(S.shape[1] + 1), method="BFGS", options={"gtol": 1e-10}).x
    return x[:-1], x[-1]


@pytest.mark.parametrize("prior", [0.5, 0.05])
def test_fusion_weights_equal_an_independent_optimiser(prior):
    S, labels = systems(0)
    fused = LinearFusion.fit(S, labels, prior)
    w, b = scipy_fusion(S, labels, prior)
    # the fit's weak L2 penalty (C = 1000 on standardised scores) moves the optimum by ~1e-5 relative here
    np.testing.assert_allclose(fused.weights, w, rtol=2e-4)
    assert fused.offset == pytest.approx(b, rel=2e-4)
    np.testing.assert_allclose(fused(S), S @ w + b, atol=1e-2)
    assert fused.prior == prior
    # the one-system case is the linear calibration
    cal, one = LinearCalibration.fit(S[:, 0], labels), LinearFusion.fit(S[:, :1], labels)
    assert (cal.scale, cal.offset) == (one.weights[0], one.offset)


def test_target_prior_moves_the_fit_towards_its_operating_point():
    S, labels = systems(1)
    at_half, at_low = LinearFusion.fit(S, labels, 0.5), LinearFusion.fit(S, labels, 0.01)
    assert not np.allclose(at_half.weights, at_low.weights, rtol=0.02)
    # each fit is the best linear LLR map for the cost at its own prior
    def weighted_cost(llr, p):
        lp = np.log(p / (1 - p))
        return p * np.mean(np.logaddexp(0, -(llr[labels] + lp))) + (1 - p) * np.mean(np.logaddexp(0, llr[~labels] + lp))
    assert weighted_cost(at_low(S), 0.01) < weighted_cost(at_half(S), 0.01)
    assert weighted_cost(at_half(S), 0.5) < weighted_cost(at_low(S), 0.5)


def test_a_noise_system_gets_near_zero_weight():
    rng = np.random.default_rng(2)
    n = 4000
    labels = rng.random(n) < 0.5
    signal = np.where(labels, 1.0, -1.0) + rng.normal(size=n)
    noise = 5.0 * rng.normal(size=n)  # larger spread than the signal, no information
    fused = LinearFusion.fit(np.column_stack([signal, noise]), labels)
    w_signal, w_noise = fused.weights
    assert w_signal == pytest.approx(2.0, rel=0.08)  # the true LLR of the signal is 2 * signal
    assert abs(w_noise) * noise.std() < 0.03 * w_signal * signal.std()
    alone = LinearCalibration.fit(signal, labels)
    assert cllr(fused(np.column_stack([signal, noise])), labels) == pytest.approx(cllr(alone(signal), labels), abs=2e-3)


def test_two_complementary_systems_fuse_better_than_either():
    def draw(seed, n=3000):
        rng = np.random.default_rng(seed)
        labels = rng.random(n) < 0.5
        truth = np.where(labels, 1.0, -1.0)
        return np.column_stack([truth + rng.normal(size=n), 2 * truth + 3 * rng.normal(size=n)]), labels
    (dev, dev_labels), (test, test_labels) = draw(3), draw(4)
    fused = LinearFusion.fit(dev, dev_labels)(test)
    for k in range(2):
        alone = LinearCalibration.fit(dev[:, k], dev_labels)(test[:, k])
        assert cllr(fused, test_labels) < cllr(alone, test_labels) - 0.03


def write_files(d, seed=5, n_trials=400):
    """dev and test trial lists, and two systems' score files of each (system b in shuffled order)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for side in ("dev", "test"):
        pairs = [(f"{side}u{i % 37}", f"{side}v{i}") for i in range(n_trials)]
        labels = rng.random(n_trials) < 0.4
        truth = np.where(labels, 1.0, -1.0)
        (d / f"{side}.trials").write_text("".join(f"{a} {b} {'target' if t else 'nontarget'}\n"
                                                  for (a, b), t in zip(pairs, labels)))
        a = truth + rng.normal(size=n_trials)
        b = 0.5 * truth + 0.7 * rng.normal(size=n_trials)
        (d / f"{side}.a").write_text("".join(f"{x} {y} {s:.6f}\n" for (x, y), s in zip(pairs, a)))
        order = rng.permutation(n_trials)
        (d / f"{side}.b").write_text("".join(f"{pairs[i][0]} {pairs[i][1]} {b[i]:.6f}\n" for i in order))
        out[side] = (pairs, labels, np.column_stack([a, b]))
    return out


def test_fuse_files_aligns_by_trial_and_writes_llrs(tmp_path):
    sides = write_files(tmp_path)
    d = tmp_path
    fit = fuse_files(str(d / "dev.trials"), [str(d / "dev.a"), str(d / "dev.b")], [str(d / "test.a"), str(d / "test.b")],
                     str(d / "test.fusion"), prior=0.2)
    pairs, _, dev_scores = sides["dev"]
    want = LinearFusion.fit(np.round(dev_scores, 6), sides["dev"][1], 0.2)
    np.testing.assert_allclose(fit["weights"], want.weights, rtol=1e-9)
    assert fit["offset"] == pytest.approx(want.offset, rel=1e-9)
    assert fit["prior"] == 0.2 and fit["method"] == "linear_fusion"
    test_pairs, _, test_scores = sides["test"]
    lines = [ln.split() for ln in (d / "test.fusion").read_text().splitlines()]
    assert [(a, b) for a, b, _ in lines] == test_pairs  # the first file's order; b was shuffled
    np.testing.assert_allclose([float(v) for _, _, v in lines], want(np.round(test_scores, 6)), atol=2e-6)


@pytest.mark.parametrize("fault, message", [
    ("missing", "test.b: trial 'testu5 testv5' (line 6 of {ref}) has no score here; fusion needs every system "
                "scored on the same trials"),
    ("extra", "test.b:401: trial 'testu0 extra' is not in {ref}; fusion needs every system scored on the same trials"),
    ("twice", "test.b:401: trial 'testu5 testv5' is scored more often than listed in {ref}"),
    ("dev_missing", "dev.b: trial 'devu5 devv5' (line 6 of {dev}) has no score here"),
])
def test_inputs_over_different_trials_are_one_line(tmp_path, fault, message):
    write_files(tmp_path)
    d = tmp_path
    side = "dev" if fault.startswith("dev") else "test"
    lines = (d / f"{side}.b").read_text().splitlines()
    key = f"{side}u5 {side}v5 "
    if fault.endswith("missing"):
        lines = [ln for ln in lines if not ln.startswith(key)]
    elif fault == "extra":
        lines.append("testu0 extra 0.5")
    else:
        lines.append(key + "0.5")
    (d / f"{side}.b").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataDirError) as e:
        fuse_files(str(d / "dev.trials"), [str(d / "dev.a"), str(d / "dev.b")], [str(d / "test.a"), str(d / "test.b")],
                   str(d / "test.fusion"))
    assert message.format(ref=d / "test.a", dev=d / "dev.trials") in str(e.value)
    assert "\n" not in str(e.value) and not (d / "test.fusion").exists()


def test_bad_fusion_options(tmp_path):
    write_files(tmp_path)
    d = tmp_path
    dev, test = [str(d / "dev.a"), str(d / "dev.b")], [str(d / "test.a"), str(d / "test.b")]
    for args, message in (((dev[:1], test[:1]), "fusion needs at least two systems"),
                          ((dev, test[:1]), "2 validation score files for 1 systems"),
                          ((dev, [test[0], test[0]]), f"fusion: {test[0]} is given twice"),
                          ((dev, test, 1.0), "--prior 1.0: the target prior must lie strictly between 0 and 1"),
                          ((dev, test, 0.5, test[1]), f"--out {test[1]} is also an input"),):
        with pytest.raises(ConfigError, match=message):
            fuse_files(str(d / "dev.trials"), *args[:2], args[3] if len(args) > 3 else str(d / "out"), *args[2:3])


def test_fuse_entry_point(tmp_path, capsys):
    write_files(tmp_path)
    d = tmp_path
    (d / "test.fusion").write_text("kept\n")
    common = ["--dev_trials", d / "dev.trials", "--dev_scores", d / "dev.a", d / "dev.b", "--out", d / "test.fusion"]
    # the trials of --scores: a missing one in the first file is named too, and the output is kept
    (d / "test.trials").write_text((d / "dev.trials").read_text().replace("dev", "test") + "testu0 more nontarget\n")
    before = snapshot(d)
    r = run_module("upmp.bin.fuse", *common, "--scores", d / "test.a", d / "test.b", "--trials", d / "test.trials")
    one_line_error(r, f"fuse.py: error: {d / 'test.a'}: trial 'testu0 more' (line 401 of {d / 'test.trials'}) has "
                      "no score here")
    assert snapshot(d) == before
    (d / "test.trials").write_text((d / "dev.trials").read_text().replace("dev", "test"))
    from upmp.bin.fuse import main
    main([str(a) for a in (*common, "--scores", d / "test.a", d / "test.b", "--trials", d / "test.trials",
                           "--prior", "0.05")])
    fit = json.loads(capsys.readouterr().out)
    assert fit["prior"] == 0.05 and len(fit["weights"]) == 2
    assert len((d / "test.fusion").read_text().splitlines()) == 400
