"""End of stage 1 for a set: join reused.scp and the finished jobs' scps into layers.scp; drop orphan arks.

    python -m upmp.bin.join_layers --data_dir data/voxceleb1_test --out_dir dump/wavlm/voxceleb1_test \
        [--run_id 20240101120000]

layers.scp gets one line per utterance of --data_dir (sorted, written atomically); an utterance without
a stack is an error. Arks of --out_dir that no scp of the dump points into (a killed job's) are removed.
See upmp.upstream.extract.join_layer_stacks.
"""
from __future__ import annotations

import logging
from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.upstream.extract import REUSED_SCP, join_layer_stacks, num_lines

logger = logging.getLogger("join_layers")


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--run_id", default=None, help="join only this run's job scps (layers.<run_id>.*.scp)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    n = join_layer_stacks(args.data_dir, args.out_dir, args.run_id)
    logger.info("%d layer stacks in %s/layers.scp (%d reused)", n, args.out_dir,
                num_lines(Path(args.out_dir) / REUSED_SCP))


if __name__ == "__main__":
    run_main(main)
