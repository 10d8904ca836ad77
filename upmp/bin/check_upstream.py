"""Check once, before stage 1's parallel jobs start, that an upstream can be built here.

    python -m upmp.bin.check_upstream --upstream wavlm_base_plus [--upstream_ckpt ckpt.pt]

Builds the upstream (downloading S3PRL weights into its cache when there is network, so the jobs
find them) and prints `<name>: L=<layers> D=<dim> frame shift <s> s`. An unknown name, a missing
checkpoint or weights that cannot be downloaded are one line saying where S3PRL looked and what to do.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.upstream import build_upstream


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--upstream", required=True, help="ge2e, hf:<dir>, or an S3PRL name")
    p.add_argument("--upstream_ckpt", default=None, help="checkpoint path for *_local upstreams")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    up = build_upstream(args.upstream, args.upstream_ckpt)
    print(f"{args.upstream}: L={up.num_layers} D={up.dim} frame shift {up.frame_shift:g} s")


if __name__ == "__main__":
    run_main(main)
