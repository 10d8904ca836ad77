"""Scoring, normalisation and metrics at VoxCeleb1-E scale, vectorised vs per trial.

    python benchmarks/scoring_speed.py [--utts 145375] [--trials 579818] [--dim 192] [--cohort 5994]

Synthetic embeddings of Vox1-E's size (145,375 utterances, 579,818 trials, a
5,994-speaker cohort as for VoxCeleb2 dev) are scored with upmp's vectorised
code and with a straightforward per-trial implementation (a Python loop over
trials, the cohort scored per trial side, metrics by scanning thresholds).
The per-trial baseline runs on a subset and is extrapolated to the full list
(linearly for scoring, quadratically for its threshold scan); the last column is
measured over measured time on the subset itself, where upmp's fixed costs
(sorting the utterance ids, preparing each utterance once) weigh more.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from upmp.metrics import compute_eer, compute_min_dcf
from upmp.scoring.scorers import CosineScorer, PLDAScorer, score_trials


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def per_trial_cosine(emb, trials):
    out = []
    for a, b, _ in trials:
        x, y = emb[a], emb[b]
        out.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
    return np.array(out)


def per_trial_asnorm(emb, trials, cohort, top_n):
    out = []
    cn = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
    for a, b, _ in trials:
        x, y = emb[a] / np.linalg.norm(emb[a]), emb[b] / np.linalg.norm(emb[b])
        s = x @ y
        se, st = np.sort(cn @ x)[-top_n:], np.sort(cn @ y)[-top_n:]
        out.append(0.5 * ((s - se.mean()) / se.std() + (s - st.mean()) / st.std()))
    return np.array(out)


def per_threshold_eer(scores, labels):
    best = None
    for t in np.unique(scores):
        p_miss = np.mean(scores[labels] < t)
        p_fa = np.mean(scores[~labels] >= t)
        if best is None or abs(p_miss - p_fa) < best[0]:
            best = (abs(p_miss - p_fa), (p_miss + p_fa) / 2)
    return best[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=145_375)
    p.add_argument("--trials", type=int, default=579_818)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--speakers", type=int, default=1_251)
    p.add_argument("--cohort", type=int, default=5_994)
    p.add_argument("--top_n", type=int, default=300)
    p.add_argument("--baseline_trials", type=int, default=20_000, help="subset for the per-trial baseline")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.speakers, args.dim))
    spk = rng.integers(args.speakers, size=args.utts)
    X = centres[spk] + 1.5 * rng.normal(size=(args.utts, args.dim))
    keys = [f"u{i:06d}" for i in range(args.utts)]
    emb = dict(zip(keys, X))
    # half the trials pair an utterance with another of its speaker (Vox1-E is balanced too)
    order = np.argsort(spk, kind="stable")
    start = np.searchsorted(spk[order], np.arange(args.speakers))
    count = np.bincount(spk, minlength=args.speakers)
    a = rng.integers(args.utts, size=args.trials)
    same = order[start[spk[a]] + (rng.random(args.trials) * count[spk[a]]).astype(int)]
    b = np.where(rng.random(args.trials) < 0.5, same, rng.integers(args.utts, size=args.trials))
    b = np.where(b == a, (a + 1) % args.utts, b)
    trials = [(keys[i], keys[j], bool(spk[i] == spk[j])) for i, j in zip(a, b)]
    labels = np.array([t for *_, t in trials])
    cohort = centres[rng.integers(args.speakers, size=args.cohort)] + 0.3 * rng.normal(size=(args.cohort, args.dim))
    train_labels = rng.integers(args.speakers, size=50_000)
    train = centres[train_labels] + 1.5 * rng.normal(size=(50_000, args.dim))

    print(f"{args.utts} utterances, {args.trials} trials, dim {args.dim}, cohort {args.cohort}, top-N {args.top_n}")
    cos, t_cos = timed(score_trials, CosineScorer(), emb, trials)
    plda_scorer, t_fit = timed(PLDAScorer(lda_dim=150).fit, train, train_labels)
    _, t_plda = timed(score_trials, plda_scorer, emb, trials)
    _, t_as = timed(score_trials, CosineScorer(), emb, trials, cohort=cohort, norm="asnorm", top_n=args.top_n)
    _, t_pas = timed(score_trials, plda_scorer, emb, trials, cohort=cohort, norm="asnorm", top_n=args.top_n)
    _, t_eer = timed(compute_eer, cos, labels)
    _, t_dcf = timed(compute_min_dcf, cos, labels, 0.01)

    # the per-trial baseline on subsets, and upmp on the same subsets (equal work)
    n = min(args.baseline_trials, args.trials)
    sub = trials[:n]
    base_cos, tb_cos = timed(per_trial_cosine, emb, sub)
    ours_cos, to_cos = timed(score_trials, CosineScorer(), emb, sub)
    np.testing.assert_allclose(base_cos, ours_cos, atol=1e-9)
    m = max(1, n // 20)
    base_as, tb_as = timed(per_trial_asnorm, emb, sub[:m], cohort, args.top_n)
    ours_as, to_as = timed(score_trials, CosineScorer(), emb, sub[:m], cohort=cohort, norm="asnorm", top_n=args.top_n)
    np.testing.assert_allclose(base_as, ours_as, atol=1e-6)
    k = max(1000, n // 10)
    base_eer, tb_eer = timed(per_threshold_eer, cos[:k], labels[:k])
    _, to_eer = timed(compute_eer, cos[:k], labels[:k])

    rows = [("cosine scoring", t_cos, tb_cos * args.trials / n, tb_cos / to_cos),
            ("cosine + AS-norm", t_as, tb_as * args.trials / m, tb_as / to_as),
            ("EER", t_eer, tb_eer * (args.trials / k) ** 2, tb_eer / to_eer)]
    print(f"\n{'task':<18}{'upmp, full list (s)':>21}{'per-trial, full list (s)':>26}{'ratio':>8}"
          f"{'ratio on the subset':>21}")
    for name, ours, base, ratio in rows:
        print(f"{name:<18}{ours:>21.2f}{base:>26.1f}{base / ours:>7.0f}x{ratio:>20.1f}x")
    print(f"\nbaseline subsets: {n} trials (cosine), {m} (AS-norm), {k} (EER, quadratic scan)")
    print(f"{'PLDA training (50k embeddings)':<32}{t_fit:8.2f} s")
    print(f"{'PLDA scoring':<32}{t_plda:8.2f} s")
    print(f"{'PLDA + AS-norm':<32}{t_pas:8.2f} s")
    print(f"{'minDCF (0.01)':<32}{t_dcf:8.2f} s")


if __name__ == "__main__":
    main()
