"""Average the weights of checkpoints of one experiment into a model.pt-format file.

    python -m upmp.bin.average_checkpoints --exp exp/upmp_x --last 5 --out exp/upmp_x/model_avg.pt
    python -m upmp.bin.average_checkpoints --exp exp/upmp_x --best 3 --out exp/upmp_x/model_best3.pt
    python -m upmp.bin.average_checkpoints --exp exp/upmp_x exp/upmp_x/checkpoints/step_00004000.pt \
        exp/upmp_x/checkpoints/step_00005000.pt --out avg.pt

--last / --best choose among the checkpoints the run kept (checkpoints/step_<N>.pt, written with
train_conf.keep_checkpoints or train_conf.average): the last N, or the N with the lowest validation
EER. Files may also be given by path (kept checkpoints, or model.pt-format files of the experiment).
Floating-point weights and batch-norm running statistics are averaged; the metadata is
<exp>/model.pt's; checkpoints of another config or architecture are refused (upmp.train.averaging).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--exp", required=True, help="the experiment dir (its model.pt gives config and metadata)")
    p.add_argument("--out", required=True, help="the averaged model file to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, help="the last N kept checkpoints")
    which.add_argument("--best", type=int, help="the N kept checkpoints with the best validation EER")
    p.add_argument("checkpoints", nargs="*", help="checkpoint files (instead of --last / --best)")
    return p


def main(argv=None) -> None:
    p = get_parser()
    args = p.parse_args(argv)
    if bool(args.checkpoints) == (args.last is not None or args.best is not None):
        p.error("give --last N, --best N or checkpoint files (one of them)")
    if (args.last is not None and args.last < 1) or (args.best is not None and args.best < 1):
        p.error("--last / --best: N must be >= 1")
    setup_logging(args.verbose)
    import logging

    import upmp.checkpoint as checkpoint
    from upmp.errors import ConfigError
    from upmp.train.averaging import average_checkpoints, select_checkpoints
    exp, out = Path(args.exp), Path(args.out)
    paths = ([Path(c) for c in args.checkpoints] if args.checkpoints
             else select_checkpoints(exp, last=args.last or 0, best=args.best or 0))
    protected = [exp / "model.pt", exp / "model_last.pt", *paths]
    if out.exists() and any(out.resolve() == q.resolve() for q in protected if q.exists()):
        raise ConfigError(f"--out {out}: is one of the experiment's models or an input; write the average elsewhere")
    content = average_checkpoints(exp, paths)
    checkpoint.save_model(out, content)
    logging.getLogger(__name__).info("%s: mean of %d checkpoints (steps %s)", out, len(paths),
                                     content["averaged"]["steps"])


if __name__ == "__main__":
    run_main(main)
