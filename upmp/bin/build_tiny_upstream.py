"""Build a tiny randomly initialised S3PRL checkpoint (offline stand-in for real weights).

    python -m upmp.bin.build_tiny_upstream --kind wavlm --out exp/upstream/wavlm_tiny.pt
    # then: --upstream wavlm_local --upstream_ckpt exp/upstream/wavlm_tiny.pt
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.errors import ConfigError
from upmp.upstream.tiny import KINDS, build_tiny_checkpoint


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--kind", choices=KINDS, default="wavlm")
    p.add_argument("--out", required=True)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--ffn_dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--conv_dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.heads < 1 or args.dim % args.heads:
        raise ConfigError(f"--dim {args.dim} must be divisible by --heads {args.heads}")
    path = build_tiny_checkpoint(args.kind, args.out, args.num_layers, args.dim, args.ffn_dim,
                                 args.heads, args.conv_dim, args.seed)
    print(path)


if __name__ == "__main__":
    run_main(main)
