"""Calibrate scores to log-likelihood ratios with logistic regression on a held-out list.

    # linear: llr = w * score + b
    python -m upmp.bin.calibrate --dev_trials data/valid/trials --dev_scores exp/x/scores/valid.cosine \
        --scores exp/x/scores/test.cosine --out exp/x/scores/test.cosine.llr
    # quality-aware (QMF): the score plus log durations and embedding norms of both sides
    python -m upmp.bin.calibrate --method qmf --dev_trials data/valid/trials --dev_scores exp/x/scores/valid.cosine \
        --dev_embeddings exp/x/embeddings/valid --embeddings exp/x/embeddings/test \
        --scores exp/x/scores/test.cosine --out exp/x/scores/test.cosine.qmf

Fits on the dev trials (classes weighted equally) and writes the test scores mapped
through the fit, in the same `<utt1> <utt2> <llr>` form; prints the fitted weights as JSON.
QMF reads each side's quality measures from the embeddings dirs of stage 3
(utt2dur and xvector.scp, whose vectors are not length-normalised).
"""
from __future__ import annotations

import json

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.errors import DataDirError
from upmp.scoring.calibration import CALIBRATION_METHODS
from upmp.scoring.files import calibrate_file


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="linear")
    p.add_argument("--dev_trials", required=True)
    p.add_argument("--dev_scores", required=True)
    p.add_argument("--scores", required=True, help="scores to calibrate")
    p.add_argument("--out", required=True)
    p.add_argument("--dev_embeddings", help="qmf: stage 3's embeddings dir of the dev set")
    p.add_argument("--embeddings", help="qmf: stage 3's embeddings dir of the scored set")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.method == "qmf" and not (args.dev_embeddings and args.embeddings):
        raise DataDirError("--method qmf needs --dev_embeddings and --embeddings (stage 3's embeddings dirs)")
    require_files(dev_trials=args.dev_trials, dev_scores=args.dev_scores, scores=args.scores)
    print(json.dumps(calibrate_file(args.method, args.dev_trials, args.dev_scores, args.scores, args.out,
                                    args.dev_embeddings, args.embeddings)))


if __name__ == "__main__":
    run_main(main)
