"""Speed perturbation as extra speakers: Kaldi data dir in -> data dir out (original + sp<f>- copies).

    python -m upmp.bin.perturb_speed [--factors "0.9 1.0 1.1"] data/voxceleb2_dev data/voxceleb2_dev_sp

Utterances, speakers and recordings of factor f are prefixed `sp<f>-`; their wav.scp entries
pipe through `sox ... speed f rate 16000`; utt2dur and segments are scaled by 1/f;
spk2gender is carried over to the copies.
"""
from __future__ import annotations

import argparse
import logging

from upmp.bin.common import fail, setup_logging
from upmp.data.kaldi_dir import DataDirError
from upmp.data.speed_perturb import perturb_speed_dir


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--factors", default="0.9 1.0 1.1", help="space-separated speed factors (1.0 = the original)")
    p.add_argument("src", help="input Kaldi data dir")
    p.add_argument("dest", help="output Kaldi data dir")
    args = p.parse_args(argv)
    setup_logging()
    try:
        factors = [float(f) for f in args.factors.split()]
    except ValueError:
        fail(f"--factors: expected numbers, got {args.factors!r}")
    try:
        out = perturb_speed_dir(args.src, args.dest, factors)
    except DataDirError as e:
        fail(str(e))
    logging.getLogger(__name__).info("%s: speed factors %s", out, " ".join(f"{f:g}" for f in factors))


if __name__ == "__main__":
    main()
