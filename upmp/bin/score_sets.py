"""Stage 4: score, calibrate and map ids for every (set, method, norm) system that is not up to date.

    python -m upmp.bin.score_sets --exp_dir exp/upmp_wavlm_base_plus --data_root data --train_set train \
        [--valid_set valid] --test_sets test1 test2 --scoring cosine plda --score_norm none asnorm \
        [--lda_dim 200] [--cohort_top_n 300] [--calibration linear qmf] [--fusion cosine plda]

Reads <exp_dir>/embeddings/<set>/xvector.scp (stage 3) and <data_root>/<set>/trials; writes
<exp_dir>/scores/<set>.<system>[.llr|.qmf|.calibration.json|.source_ids|.opts]; with --fusion (systems
of this run, fitted on --valid_set) also <set>.fusion (fused LLRs) and <set>.fusion.json (the weights).
One log line per system (scored, or up to date and skipped). Files and freshness rules: upmp.scoring.stage.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.scoring.calibration import CALIBRATION_METHODS
from upmp.scoring.scorers import SCORE_NORMS, SCORING_METHODS
from upmp.scoring.stage import score_sets


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--data_root", default="data")
    p.add_argument("--train_set", required=True, help="set whose embeddings train PLDA and the cohort")
    p.add_argument("--valid_set", default=None, help="set with trials the test sets are calibrated on")
    p.add_argument("--test_sets", nargs="+", required=True)
    p.add_argument("--scoring", nargs="+", default=["cosine"], choices=SCORING_METHODS)
    p.add_argument("--score_norm", nargs="+", default=["none"], choices=SCORE_NORMS)
    p.add_argument("--lda_dim", type=int, default=200)
    p.add_argument("--cohort_top_n", type=int, default=300)
    p.add_argument("--calibration", nargs="*", default=["linear"], choices=CALIBRATION_METHODS)
    p.add_argument("--fusion", nargs="*", default=[], help="systems to fuse, e.g. cosine plda (needs --valid_set)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    score_sets(args.exp_dir, args.data_root, args.train_set, args.valid_set or None, args.test_sets, args.scoring,
               args.score_norm, args.lda_dim, args.cohort_top_n, args.calibration, args.fusion)


if __name__ == "__main__":
    run_main(main)
