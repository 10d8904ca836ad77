"""EER and minDCF of a score file against Kaldi trials.

    python -m upmp.bin.compute_metrics data/test/trials exp/x/scores/test.cosine [--json]
"""
from __future__ import annotations

import argparse
import json

from upmp.bin.common import fail
from upmp.data.kaldi_dir import DataDirError
from upmp.data.trials import align_scores
from upmp.metrics import EER_CONVENTION, compute_eer, compute_min_dcf
from upmp.scoring.calibration import actual_dcf, cllr


def compute_all(trials: str, scores: str, llr: bool = False) -> dict:
    """compute_metrics of a score file aligned to Kaldi trials."""
    return metrics_of(*align_scores(trials, scores), llr=llr)


def metrics_of(s, labels, llr: bool = False) -> dict:
    """EER (%), minDCF at 0.01 / 0.05, counts; with llr=True (calibrated scores) also
    Cllr and actual DCF at 0.01 / 0.05."""
    out = {"eer": 100 * compute_eer(s, labels),
           "mindcf_0.01": compute_min_dcf(s, labels, 0.01),
           "mindcf_0.05": compute_min_dcf(s, labels, 0.05),
           "n_target": int(labels.sum()), "n_nontarget": int((~labels).sum())}
    if llr:
        out.update({"cllr": cllr(s, labels), "actdcf_0.01": actual_dcf(s, labels, 0.01),
                    "actdcf_0.05": actual_dcf(s, labels, 0.05)})
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trials")
    p.add_argument("scores")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--llr", action="store_true", help="scores are calibrated LLRs: add Cllr and actual DCF")
    args = p.parse_args(argv)
    try:
        m = compute_all(args.trials, args.scores, args.llr)
    except (DataDirError, ValueError, FileNotFoundError) as e:
        fail(str(e))
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
    main()
