"""EER / minDCF against hand-computed cases and an independent brute-force formula."""
import numpy as np
import pytest

from upmp.metrics import compute_eer, compute_min_dcf


def brute_force(scores, labels, p_target):
    """Independent reference: every threshold (accept score >= t), plain Python loops."""
    tar = [s for s, l in zip(scores, labels) if l]
    non = [s for s, l in zip(scores, labels) if not l]
    points = []
    for t in sorted(set(scores)) + [float("inf")]:
        p_miss = sum(s < t for s in tar) / len(tar)
        p_fa = sum(s >= t for s in non) / len(non)
        points.append((p_miss, p_fa))
    dcf = min(m * p_target + f * (1 - p_target) for m, f in points) / min(p_target, 1 - p_target)
    for (m0, f0), (m1, f1) in zip(points, points[1:]):
        if m0 < f0 and m1 >= f1:  # the crossing: interpolate on the segment
            a = (f0 - m0) / ((m1 - m0) - (f1 - f0))
            return m0 + a * (m1 - m0), dcf
    raise AssertionError("no crossing")


def test_perfect_separation():
    assert compute_eer([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0
    assert compute_min_dcf([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], 0.01) == 0.0


def test_fully_reversed():
    assert compute_eer([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 1.0
    # best is to reject (or accept) everything: DCF = min(P_tar, 1 - P_tar) -> normalised 1
    assert compute_min_dcf([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0], 0.01) == pytest.approx(1.0)


def test_all_scores_equal():
    assert compute_eer([0.5] * 6, [1, 0, 1, 0, 0, 0]) == pytest.approx(0.5)
    assert compute_min_dcf([0.5] * 6, [1, 0, 1, 0, 0, 0], 0.05) == pytest.approx(1.0)


def test_one_trial_per_class():
    assert compute_eer(np.array([2.0, 1.0]), np.array([True, False])) == 0.0
    assert compute_eer(np.array([1.0, 2.0]), np.array([True, False])) == 1.0
    assert compute_eer(np.array([1.0, 1.0]), np.array([True, False])) == pytest.approx(0.5)


def test_hand_computed_with_interpolation():
    # targets 0.4 0.6 0.8, nontargets 0.1 0.5 0.7
    # points (P_miss, P_fa): t=.1 (0,1)  t=.4 (0,2/3)  t=.5 (1/3,2/3)  t=.6 (1/3,1/3)  ...
    # crossing between t=.5 (1/3, 2/3) and t=.6 (1/3, 1/3): P_miss = 1/3 on the whole segment
    s = [0.4, 0.6, 0.8, 0.1, 0.5, 0.7]
    l = [1, 1, 1, 0, 0, 0]
    assert compute_eer(s, l) == pytest.approx(1 / 3)
    # minDCF(0.5): min over points of 0.5 (P_miss + P_fa) / 0.5 = min(P_miss + P_fa) = 2/3
    assert compute_min_dcf(s, l, 0.5) == pytest.approx(2 / 3)


def test_interpolated_crossing_inside_a_segment():
    # one target at 0.5 and nontargets 0.2 0.5 0.6 0.7 tied with/around it
    # points: t=.2 (0,1)  t=.5 (0,3/4)  t=.6 (1,1/2) -> cross on segment (0,3/4)-(1,1/2): 3/5
    s = [0.5, 0.2, 0.5, 0.6, 0.7]
    l = [1, 0, 0, 0, 0]
    assert compute_eer(s, l) == pytest.approx(3 / 5)


def test_ties_between_classes_count_once():
    s = [1, 1, 2, 2, 1, 0, 2, 0]
    l = [1, 1, 1, 1, 0, 0, 0, 0]
    eer, dcf = brute_force(s, l, 0.01)
    assert compute_eer(s, l) == pytest.approx(eer)
    assert compute_min_dcf(s, l, 0.01) == pytest.approx(dcf)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # rounding makes ties
    eer, dcf01 = brute_force(list(scores), list(labels), 0.01)
    _, dcf05 = brute_force(list(scores), list(labels), 0.05)
    assert compute_eer(scores, labels) == pytest.approx(eer)
    assert compute_min_dcf(scores, labels, 0.01) == pytest.approx(dcf01)
    assert compute_min_dcf(scores, labels, 0.05) == pytest.approx(dcf05)


def test_errors():
    with pytest.raises(ValueError, match="at least one target and one nontarget"):
        compute_eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        compute_eer([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [1, 0], 1.5)


def authors_sweep(tar, non, p_target=0.01):
    """The UniPool / L-TDNN authors' metrics as their code computes them (SpeechBrain's sweep), written
    out: thresholds at the distinct scores and the midpoints between them, reject when score <= t;
    EER = (FAR + FRR) / 2 at the first threshold with the smallest |FAR - FRR| (and that threshold);
    minDCF = min P_miss P_tar + P_fa (1 - P_tar), not normalised."""
    s = sorted(set(tar) | set(non))
    best, dcf = None, float("inf")
    for t in sorted(s + [(a + b) / 2 for a, b in zip(s, s[1:])]):
        frr = sum(x <= t for x in tar) / len(tar)
        far = sum(x > t for x in non) / len(non)
        if best is None or abs(far - frr) < abs(best[0] - best[1]):
            best = (far, frr, t)
        dcf = min(dcf, frr * p_target + far * (1 - p_target))
    return (best[0] + best[1]) / 2, best[2], dcf


def test_authors_conventions():
    """What RESULTS.md and docs/method.md say about comparing with the authors' figures: their minDCF (0.01)
    x 100 is ours; clamping cosine to [0, 1] leaves their EER alone when its threshold is above 0, and
    changes it when below (hand-computed case)."""
    rng = np.random.default_rng(0)
    tar, non = np.clip(rng.normal(0.5, 0.2, 60), -1, 1), np.clip(rng.normal(0.05, 0.2, 240), -1, 1)
    assert (non < 0).sum() > 50  # many nontargets below 0: clamping merges them into ties at 0
    scores, labels = np.r_[tar, non], np.r_[np.ones(60, bool), np.zeros(240, bool)]
    eer, threshold, dcf = authors_sweep(list(tar), list(non))
    assert threshold > 0 and compute_min_dcf(scores, labels, 0.01) == pytest.approx(100 * dcf)
    clamped = authors_sweep(list(np.clip(tar, 0, 1)), list(np.clip(non, 0, 1)))
    assert clamped[0] == eer and clamped[2] == pytest.approx(dcf)
    assert abs(compute_eer(scores, labels) - eer) <= 1 / 60  # interpolated vs their midpoint: within a trial
    # the EER threshold below 0: -0.2 (FRR = FAR = 1/3); clamped, the four scores <= 0 tie at 0 and the
    # best point is t = 0 (FRR 1/3, FAR 0): 1/6
    tar, non = [-0.2, 0.3, 0.5], [-0.5, -0.4, -0.1]
    assert authors_sweep(tar, non)[:2] == (pytest.approx(1 / 3), -0.2)
    assert authors_sweep([max(x, 0) for x in tar], [max(x, 0) for x in non])[:2] == (pytest.approx(1 / 6), 0)
    assert compute_eer(np.r_[tar, non], np.r_[[True] * 3, [False] * 3]) == pytest.approx(1 / 3)
