"""Fuse several systems' scores into one calibrated score (linear logistic-regression fusion, BOSARIS style).

    # two systems of one experiment (stage 4 does this with sv.sh --fusion "cosine plda")
    python -m upmp.bin.fuse --dev_trials data/valid/trials \
        --dev_scores exp/x/scores/valid.cosine exp/x/scores/valid.plda \
        --scores exp/x/scores/test.cosine exp/x/scores/test.plda --out exp/x/scores/test.fusion
    # systems of several experiments (the same sets and trials), fitted at a target prior of 0.01
    python -m upmp.bin.fuse --prior 0.01 --dev_trials data/valid/trials \
        --dev_scores exp/upmp_a/scores/valid.plda exp/lap_a/scores/valid.plda \
        --scores exp/upmp_a/scores/test.plda exp/lap_a/scores/test.plda --out exp/fusion/test.fusion \
        --trials data/test/trials
    python -m upmp.bin.compute_metrics --llr --trials data/test/trials --scores exp/fusion/test.fusion

Fits llr = w_1 s_1 + ... + w_K s_K + b on the validation trials (--dev_scores: one file per system,
in the order of --scores), prior-weighted at --prior (0.5: both classes weigh the same, as the
linear calibration), and writes the fused LLRs of the --scores as `<utt1> <utt2> <llr>` lines (in the
order of --trials, or of the first score file). Every file must score the same trials as its side's
reference (the dev trials, --trials or the first score file): a trial missing, extra or scored
another number of times is one error line naming the file and the trial. Prints the fit as JSON.
"""
from __future__ import annotations

import json

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.scoring.files import fuse_files


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--dev_trials", required=True, help="Kaldi trials the fusion is fitted on")
    p.add_argument("--dev_scores", nargs="+", required=True, help="each system's scores of --dev_trials")
    p.add_argument("--scores", nargs="+", required=True, help="each system's scores to fuse (same order)")
    p.add_argument("--out", required=True, help="fused score file (LLRs) to write")
    p.add_argument("--trials", default=None, help="trials of --scores: the output's order (default: the first file's)")
    p.add_argument("--prior", type=float, default=0.5, help="target prior the fusion is weighted at")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(dev_trials=args.dev_trials, **({"trials": args.trials} if args.trials else {}))
    for option, files in (("dev_scores", args.dev_scores), ("scores", args.scores)):
        for f in files:
            require_files(**{option: f})
    print(json.dumps(fuse_files(args.dev_trials, args.dev_scores, args.scores, args.out, args.prior, args.trials)))


if __name__ == "__main__":
    run_main(main)
