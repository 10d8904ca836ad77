"""The steps before PLDA in PLDAScorer (upmp/scoring/scorers.py: training-mean subtraction, LDA,
length normalisation to sqrt(dim)) against values computed here by hand: LDA from the between- and
within-speaker scatter (scipy's generalised eigh), length normalisation by dividing by the norm."""
import numpy as np
import pytest
from scipy.linalg import eigh

from upmp.scoring.plda import PLDA


def speakers(rng, n_spk=6, per_spk=9, d=7):
    """Speaker means spread along a few directions, correlated within-speaker noise."""
    mixing = rng.normal(size=(d, d))
    centres = rng.normal(size=(n_spk, d)) * np.linspace(3, 0.5, d)
    X = np.concatenate([c + rng.normal(size=(per_spk, d)) @ mixing for c in centres]) + 5.0
    return X, np.repeat([f"s{i}" for i in range(n_spk)], per_spk)


def lda_by_hand(X, labels, dim, shrinkage=1e-4):
    """Directions V (d, dim) maximising between / within scatter, with V^T Sw V = I, and their ratios.
    Each covariance C is shrunk to (1 - a) C + a trace(C) / d I, a = 1e-4, as the scorer regularises it
    (Sb = St - Sw of the shrunk total and within covariances)."""
    d = X.shape[1]

    def cov(A):
        C = (A - A.mean(axis=0)).T @ (A - A.mean(axis=0)) / len(A)
        return (1 - shrinkage) * C + shrinkage * np.trace(C) / d * np.eye(d)
    Sw = sum(np.mean(labels == s) * cov(X[labels == s]) for s in np.unique(labels))
    Sb = cov(X) - Sw
    ratios, V = eigh(Sb, Sw)  # ascending; V^T Sw V = I
    return V[:, ::-1][:, :dim], ratios[::-1][:dim], Sb, Sw


def test_mean_lda_and_length_norm_equal_hand_computed():
    from upmp.scoring.scorers import PLDAScorer
    rng = np.random.default_rng(0)
    X, labels = speakers(rng)
    scorer = PLDAScorer(lda_dim=3).fit(X, labels)
    mean = X.mean(axis=0)
    np.testing.assert_allclose(scorer.mean, mean, atol=1e-12)
    V, ratios, Sb, Sw = lda_by_hand(X, labels, 3)
    assert ratios[0] > ratios[1] > ratios[2] > 1.5 * np.sort(eigh(Sb, Sw, eigvals_only=True))[-4]  # distinct, a gap after 3
    # the vectors PLDA sees: prepare() is PLDA's affine projection of them, so invert it
    test = rng.normal(size=(5, X.shape[1])) * 2 + 5.0  # not training vectors: the training mean is subtracted
    for Y in (test, X):
        P = scorer.prepare(Y)
        seen = P @ np.linalg.inv(scorer.plda.transform) + scorer.plda.mean
        np.testing.assert_allclose(np.linalg.norm(seen, axis=1), np.sqrt(3), rtol=1e-9)  # Kaldi: norm sqrt(dim)
        Z = (Y - mean) @ V
        want = Z * (np.sqrt(3) / np.linalg.norm(Z, axis=1, keepdims=True))
        signs = np.sign(np.sum(want * seen, axis=0))  # each LDA direction is defined up to its sign
        np.testing.assert_allclose(seen, want * signs, atol=1e-6)
    # and PLDA was trained on those same vectors of the training set (not the LDA output before normalising)
    plda = PLDA().fit(want * signs, labels, scorer.num_iters)
    for a, b in ((plda.mean, scorer.plda.mean), (plda.between, scorer.plda.between), (plda.within, scorer.plda.within)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # the scorer's LDA directions (recovered by least squares) have the hand-computed scatter ratios, best first
    W = np.linalg.lstsq(X - mean, scorer.lda.transform(X - mean), rcond=None)[0]
    np.testing.assert_allclose([w @ Sb @ w / (w @ Sw @ w) for w in W.T], ratios, rtol=1e-6)
    np.testing.assert_allclose(W.T @ Sw @ W, np.eye(3), atol=1e-6)  # whitened within-speaker scatter


@pytest.mark.parametrize("lda_dim, want", [(None, 5), (200, 5), (2, 2)])
def test_lda_dimension(lda_dim, want):
    """At most (speakers - 1) directions (6 speakers: 5), fewer when lda_dim asks."""
    from upmp.scoring.scorers import PLDAScorer
    X, labels = speakers(np.random.default_rng(1))
    scorer = PLDAScorer(lda_dim=lda_dim).fit(X, labels)
    assert scorer.prepare(X[:2]).shape == (2, want)
