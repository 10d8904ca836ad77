"""Score Kaldi trials with embeddings from any Kaldi-compatible toolkit.

    python -m upmp.bin.score --method cosine|plda --embeddings test/xvector.scp --trials trials --out scores \
        [--train_embeddings train/xvector.scp --utt2spk data/train/utt2spk] [--lda_dim 200] [--subtract_mean] \
        [--score_norm none|snorm|asnorm --cohort_top_n 300 [--cohort cohort.scp]]

PLDA, mean subtraction and score normalisation are trained on --train_embeddings
(speakers from --utt2spk). The normalisation cohort is --cohort, or by default
the training speakers' mean embeddings. Writes `<utt1> <utt2> <score>` lines in
trial order.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from upmp.bin.common import fail, setup_logging
from upmp.data.kaldi_dir import DataDirError, read_table
from upmp.fileio import atomic_write_text
from upmp.data.trials import read_kaldi_trials
from upmp.scoring.scorers import build_scorer, score_trials, speaker_means

logger = logging.getLogger("score")


def load_embeddings(scp: str) -> dict:
    import kaldiio
    try:
        return {k: np.asarray(v, dtype=np.float64) for k, v in kaldiio.load_scp(scp).items()}
    except FileNotFoundError as e:
        raise DataDirError(f"{scp}: {e}") from None


def labelled_matrix(embeddings: dict, utt2spk_path: str, scp: str):
    utt2spk = read_table(utt2spk_path)
    missing = [u for u in embeddings if u not in utt2spk]
    if missing:
        raise DataDirError(f"{scp}: utterance {missing[0]!r} has no speaker in {utt2spk_path}")
    keys = sorted(embeddings)
    return np.stack([embeddings[k] for k in keys]), np.array([utt2spk[k] for k in keys])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="cosine", choices=["cosine", "plda"])
    p.add_argument("--embeddings", required=True, help="xvector.scp of the trial utterances")
    p.add_argument("--trials", required=True, help="Kaldi trials: <utt1> <utt2> target|nontarget")
    p.add_argument("--out", required=True)
    p.add_argument("--train_embeddings", default=None, help="xvector.scp of the training set")
    p.add_argument("--utt2spk", default=None, help="speakers of the training embeddings")
    p.add_argument("--lda_dim", type=int, default=200)
    p.add_argument("--subtract_mean", action="store_true", help="cosine: subtract the training mean first")
    p.add_argument("--score_norm", default="none", choices=["none", "snorm", "asnorm"])
    p.add_argument("--cohort_top_n", type=int, default=300)
    p.add_argument("--cohort", default=None, help="cohort embeddings scp (default: training speaker means)")
    args = p.parse_args(argv)
    setup_logging()
    needs_train = args.method == "plda" or args.subtract_mean or (args.score_norm != "none" and not args.cohort)
    if needs_train and not (args.train_embeddings and args.utt2spk):
        fail(f"--method {args.method} / --subtract_mean / --score_norm {args.score_norm} need "
             f"--train_embeddings and --utt2spk")
    t0 = time.time()
    try:
        trials = read_kaldi_trials(args.trials)
        emb = load_embeddings(args.embeddings)
        scorer = build_scorer(args.method, args.lda_dim, args.subtract_mean)
        cohort = None
        if needs_train:
            X, labels = labelled_matrix(load_embeddings(args.train_embeddings), args.utt2spk, args.train_embeddings)
            scorer.fit(X, labels)
            if args.score_norm != "none" and not args.cohort:
                cohort = speaker_means(X, labels)
        if args.cohort:
            cohort = np.stack(list(load_embeddings(args.cohort).values()))
        scores = score_trials(scorer, emb, trials, source=args.embeddings, cohort=cohort,
                              norm=args.score_norm, top_n=args.cohort_top_n)
    except (DataDirError, ValueError) as e:
        fail(str(e))
    atomic_write_text(args.out, "".join(f"{a} {b} {s:.6f}\n" for (a, b, _), s in zip(trials, scores)))
    logger.info("scored %d trials (%s, norm %s) in %.1f s -> %s", len(trials), args.method, args.score_norm,
                time.time() - t0, args.out)


if __name__ == "__main__":
    main()
