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

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.scoring.files import check_score_args, score_file
from upmp.scoring.scorers import SCORE_NORMS, SCORING_METHODS

logger = logging.getLogger("score")


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--method", default="cosine", choices=SCORING_METHODS)
    p.add_argument("--embeddings", required=True, help="xvector.scp of the trial utterances")
    p.add_argument("--trials", required=True, help="Kaldi trials: <utt1> <utt2> target|nontarget")
    p.add_argument("--out", required=True)
    p.add_argument("--train_embeddings", default=None, help="xvector.scp of the training set")
    p.add_argument("--utt2spk", default=None, help="speakers of the training embeddings")
    p.add_argument("--lda_dim", type=int, default=200)
    p.add_argument("--subtract_mean", action="store_true", help="cosine: subtract the training mean first")
    p.add_argument("--score_norm", default="none", choices=SCORE_NORMS)
    p.add_argument("--cohort_top_n", type=int, default=300)
    p.add_argument("--cohort", default=None, help="cohort embeddings scp (default: training speaker means)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_score_args(args.method, args.train_embeddings, args.utt2spk, args.subtract_mean, args.score_norm,
                     args.cohort)
    require_files(trials=args.trials, utt2spk=args.utt2spk)
    t0 = time.time()
    n = score_file(args.method, args.embeddings, args.trials, args.out, args.train_embeddings, args.utt2spk,
                   args.lda_dim, args.subtract_mean, args.score_norm, args.cohort_top_n, args.cohort)
    logger.info("scored %d trials (%s, norm %s) in %.1f s -> %s", n, args.method, args.score_norm,
                time.time() - t0, args.out)


if __name__ == "__main__":
    run_main(main)
