"""Plan stage 1 for a set: reuse finished stacks (this set's earlier jobs, other sets' dumps), list the rest.

    python -m upmp.bin.reuse_layers --data_dir data/voxceleb1_h --out_dir dump/wavlm/voxceleb1_h \
        --sets voxceleb1_e voxceleb1_h voxceleb1_test --upstream wavlm_base_plus --storage float32 \
        [--upstream_ckpt ckpt.pt] [--layers 0-12] [--from dump/other_run/voxceleb1_e] [--check]

With --check nothing is planned: it prints `complete` (and logs that it skips) when the set's
done-record <out_dir>/layers.scp.done matches its data dir and the stacks asked for, else `stale`
(rules: upmp.upstream.extract.layer_stacks_done). Without: test lists often share utterances (Vox1-O
and Vox1-H lie inside Vox1-E), and a killed or failed stage 1 leaves finished jobs behind: both are
reused, from the set's own dump, the dumps of the run's --sets beside <out_dir> and any --from dirs
(rules: upmp.upstream.extract.plan_extraction). Writes <out_dir>/plan_inputs.json (the tables as it read
them, for join_layers's record), reused.scp and todo/ (a Kaldi data dir of the utterances still to
extract, absent when none), and prints their number.
"""
from __future__ import annotations

import logging

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.layer_stacks import LAYERS_FORMS, parse_layers
from pathlib import Path

from upmp.upstream.extract import JOINED_SCP, layer_stacks_done, plan_set, weights_id

logger = logging.getLogger("reuse_layers")


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--sets", nargs="*", default=[],
                   help="the run's sets: their dumps beside --out_dir are reused from (its own is skipped)")
    p.add_argument("--from", dest="sources", nargs="*", default=[],
                   help="dump dirs of other sets (<dump>/<set>, with data/<set> beside the data dir)")
    p.add_argument("--upstream", required=True, help="the upstream of this extraction (must match)")
    p.add_argument("--upstream_ckpt", default=None, help="its checkpoint, if any: stacks made with other bytes under "
                   "the same name are not reused (SHA-256)")
    p.add_argument("--storage", required=True)
    p.add_argument("--layers", default="all", help=f"hidden states kept (must match): {LAYERS_FORMS}")
    p.add_argument("--check", action="store_true", help="plan nothing: print complete (the stacks are up to "
                   "date) or stale")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    weights = weights_id(args.upstream, args.upstream_ckpt)
    if args.check:
        verdict = layer_stacks_done(args.data_dir, args.out_dir, args.upstream, args.storage,
                                    parse_layers(args.layers), weights)
        if verdict:
            logger.info("%s/layers.scp is complete, skipping (delete it to extract again)", args.out_dir)
        elif Path(args.out_dir, JOINED_SCP).is_file():
            logger.info("%s/layers.scp is out of date (%s): planning again", args.out_dir, verdict.reason)
        print("complete" if verdict else "stale")
        return
    plan = plan_set(args.data_dir, args.out_dir, args.sets, args.upstream, args.storage, args.sources,
                    parse_layers(args.layers), weights)
    logger.info("%s: %d of %d utterances reused (%d from this set's earlier jobs), %d to extract", args.data_dir,
                len(plan.reused), len(plan.reused) + len(plan.todo), plan.resumed, len(plan.todo))
    print(len(plan.todo))


if __name__ == "__main__":
    run_main(main)
