"""EER and minDCF of a score file against Kaldi trials.

    python -m upmp.bin.compute_metrics --trials data/test/trials --scores exp/x/scores/test.cosine [--json] [--llr]

EER convention and minDCF normalisation: upmp.metrics. --llr (calibrated scores) adds Cllr and actual DCF.
"""
from __future__ import annotations

import json

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.metrics import EER_CONVENTION
from upmp.results import metrics_of_files


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--trials", required=True, help="Kaldi trials: <utt1> <utt2> target|nontarget")
    p.add_argument("--scores", required=True, help="score file: <utt1> <utt2> <score>")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--llr", action="store_true", help="scores are calibrated LLRs: add Cllr and actual DCF")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(trials=args.trials, scores=args.scores)
    m = metrics_of_files(args.trials, args.scores, args.llr)
    if args.json:
        print(json.dumps(m))
        return
    print(f"EER: {m['eer']:.3f} %  ({EER_CONVENTION})")
    print(f"minDCF (P_tar=0.01): {m['mindcf_0.01']:.4f}")
    print(f"minDCF (P_tar=0.05): {m['mindcf_0.05']:.4f}")
    if args.llr:
        print(f"Cllr: {m['cllr']:.4f} bits  actDCF (0.01): {m['actdcf_0.01']:.4f}  actDCF (0.05): {m['actdcf_0.05']:.4f}")
    print(f"trials: {m['n_target']} target, {m['n_nontarget']} nontarget")


if __name__ == "__main__":
    run_main(main)
