"""Check once, before stage 1's parallel jobs start, that an upstream can be built here.

    python -m upmp.bin.check_upstream --upstream wavlm_base_plus [--upstream_ckpt ckpt.pt] [--layers 0,4,8,12]

Builds the upstream (downloading S3PRL weights into its cache when there is network, so the jobs
find them) and prints `<name>: L=<layers> D=<dim> frame shift <s> s`. An unknown name, a missing
checkpoint or weights that cannot be downloaded are one line saying where S3PRL looked and what to do;
so is a --layers value that is malformed or names a hidden state the upstream does not have.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.layer_stacks import LAYERS_FORMS, parse_layers
from upmp.upstream import build_upstream


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--upstream", required=True, help="ge2e, hf:<dir>, or an S3PRL name")
    p.add_argument("--upstream_ckpt", default=None, help="checkpoint path for *_local upstreams")
    p.add_argument("--layers", default="all", help=f"the hidden states stage 1 keeps: {LAYERS_FORMS}")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    parse_layers(args.layers)  # a malformed value fails before the upstream loads
    up = build_upstream(args.upstream, args.upstream_ckpt)
    parse_layers(args.layers, up.num_layers)
    print(f"{args.upstream}: L={up.num_layers} D={up.dim} frame shift {up.frame_shift:g} s")


if __name__ == "__main__":
    run_main(main)
