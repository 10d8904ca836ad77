"""Calibrate scores to log-likelihood ratios with logistic regression on a held-out list.

    python -m upmp.bin.calibrate --dev_trials data/valid/trials --dev_scores exp/x/scores/valid.cosine \
        --scores exp/x/scores/test.cosine --out exp/x/scores/test.cosine.llr

Fits llr = w * score + b on the dev trials (classes weighted equally) and writes
the test scores mapped through it, in the same `<utt1> <utt2> <llr>` form; prints
the fitted scale and offset as JSON.
"""
from __future__ import annotations

import json

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.data.trials import align_scores, read_scores
from upmp.scoring.calibration import LinearCalibration
from upmp.scoring.io import write_scores


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--dev_trials", required=True)
    p.add_argument("--dev_scores", required=True)
    p.add_argument("--scores", required=True, help="scores to calibrate")
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(dev_trials=args.dev_trials, dev_scores=args.dev_scores, scores=args.scores)
    dev, labels = align_scores(args.dev_trials, args.dev_scores)
    cal = LinearCalibration.fit(dev, labels, source=args.dev_trials)
    scores = read_scores(args.scores)
    write_scores(args.out, list(scores), cal(list(scores.values())))
    print(json.dumps({"scale": cal.scale, "offset": cal.offset}))


if __name__ == "__main__":
    run_main(main)
