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

import logging
import time

import numpy as np

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.errors import ConfigError
from upmp.scoring.io import labelled_matrix, load_embeddings, load_trials, write_scores
from upmp.scoring.scorers import build_scorer, score_trials, speaker_means

logger = logging.getLogger("score")


def get_parser():
    p = make_parser(__doc__)
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
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    needs_train = args.method == "plda" or args.subtract_mean or (args.score_norm != "none" and not args.cohort)
    if needs_train and not (args.train_embeddings and args.utt2spk):
        raise ConfigError(f"--method {args.method} / --subtract_mean / --score_norm {args.score_norm} need "
                          f"--train_embeddings and --utt2spk")
    require_files(trials=args.trials, utt2spk=args.utt2spk)
    t0 = time.time()
    trials = load_trials(args.trials)
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
    write_scores(args.out, trials, scores)
    logger.info("scored %d trials (%s, norm %s) in %.1f s -> %s", len(trials), args.method, args.score_norm,
                time.time() - t0, args.out)


if __name__ == "__main__":
    run_main(main)
