"""Calibrate scores to log-likelihood ratios with logistic regression on a held-out list.

    python -m upmp.bin.calibrate --dev_trials data/valid/trials --dev_scores exp/x/scores/valid.cosine \
        --scores exp/x/scores/test.cosine --out exp/x/scores/test.cosine.llr

Fits llr = w * score + b on the dev trials (classes weighted equally) and writes
the test scores mapped through it, in the same `<utt1> <utt2> <llr>` form.
"""
from __future__ import annotations

import argparse
import json

from upmp.bin.common import fail
from upmp.data.kaldi_dir import DataDirError
from upmp.fileio import atomic_write_text
from upmp.data.trials import align_scores, read_scores
from upmp.scoring.calibration import LinearCalibration


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev_trials", required=True)
    p.add_argument("--dev_scores", required=True)
    p.add_argument("--scores", required=True, help="scores to calibrate")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        dev, labels = align_scores(args.dev_trials, args.dev_scores)
        cal = LinearCalibration.fit(dev, labels)
        scores = read_scores(args.scores)
    except (DataDirError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    llr = cal(list(scores.values()))
    atomic_write_text(args.out, "".join(f"{a} {b} {v:.6f}\n" for (a, b), v in zip(scores, llr)))
    print(json.dumps({"scale": cal.scale, "offset": cal.offset}))


if __name__ == "__main__":
    main()
