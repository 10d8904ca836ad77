"""Stage 5: metrics of every test set's scores -> <exp_dir>/RESULTS.md, results.json and det_<set>.png.

    python -m upmp.bin.write_results --exp_dir exp/upmp_x --systems cosine plda.asnorm --test_sets voxceleb1_test

Reads <data_root>/<set>/trials and <exp_dir>/scores/<set>.<system> (and <set>.<system>.llr when calibrated). A system named
<x>.qmf holds QMF-calibrated LLRs.
"""
from __future__ import annotations

from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.results import write_experiment_results


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--systems", nargs="+", default=["cosine"],
                   help="score-file suffixes, e.g. cosine plda.asnorm (<exp>/scores/<set>.<system>)")
    p.add_argument("--upstream", default="")
    p.add_argument("--data_root", default="data")
    p.add_argument("--test_sets", nargs="+", required=True)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    write_experiment_results(Path(args.exp_dir), args.systems, args.test_sets, args.upstream, args.data_root)


if __name__ == "__main__":
    run_main(main)
