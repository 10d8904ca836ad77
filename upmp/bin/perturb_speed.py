"""Speed perturbation as extra speakers: Kaldi data dir in -> data dir out (original + sp<f>- copies).

    python -m upmp.bin.perturb_speed [--factors "0.9 1.0 1.1"] data/voxceleb2_dev data/voxceleb2_dev_sp

(src and dest are positionals, as in Kaldi's utils/data/perturb_data_dir_speed.sh.) Utterances,
speakers and recordings of factor f are prefixed `sp<f>-`; their wav.scp entries pipe through
`sox ... speed f rate 16000`; utt2dur and segments are scaled by 1/f; spk2gender is carried over
to the copies.
"""
from __future__ import annotations

import logging

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.speed_perturb import perturb_speed_dir
from upmp.errors import ConfigError


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--factors", default="0.9 1.0 1.1", help="space-separated speed factors (1.0 = the original)")
    p.add_argument("src", help="input Kaldi data dir")
    p.add_argument("dest", help="output Kaldi data dir")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        factors = [float(f) for f in args.factors.split()]
    except ValueError:  # only float() of the option's words is inside
        raise ConfigError(f"--factors: expected numbers, got {args.factors!r}") from None
    out = perturb_speed_dir(args.src, args.dest, factors)
    logging.getLogger(__name__).info("%s: speed factors %s", out, " ".join(f"{f:g}" for f in factors))


if __name__ == "__main__":
    run_main(main)
