"""One comparison table over experiments: the backends (and upstreams) side by side.

    python -m upmp.bin.compare_results --out exp/RESULTS.md --exp_dirs exp/*/

Reads each <exp_dir>/results.json (written by stage 5) and writes one Markdown
table: experiment, backend, trainable parameters, training time, test set,
system, EER, minDCF (0.01 / 0.05).
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.results import write_comparison


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--exp_dirs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    write_comparison(args.out, args.exp_dirs)


if __name__ == "__main__":
    run_main(main)
