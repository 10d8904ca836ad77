"""Turn a checkpoint of the authors' own code into a upmp experiment directory.

    python -m upmp.bin.import_checkpoint --from <model_best.pt> --kind <kind> --upstream hf:<dir> --out exp/<name>

--kind: unipool (github.com/sadPororo/UniPool-SV: model_best.pt / model_ckpt.pt), ltdnn_d3net and
ltdnn_ecapa (github.com/sadPororo/L-TDNN L-TDNN_D3Net / L-TDNN_ECAPA, same layout; trained with
n_layer 0, every hidden state: a model of fewer layers than --upstream is refused), lap
(github.com/sadPororo/LAP: an epoch folder's model.state, or the run's folder: best_tracking.txt
names the best epoch). --out gets model.pt (backend and loss head), config.yaml, train_summary.json
and imported.json, as stage 2 leaves an experiment, so stages 3-5, package_model and export_onnx
take it. The file is read as data (tensors, plain data and numpy's random state); the upstream's
weights in it are compared with --upstream's: a fine-tuned upstream is stored with the model (needs
--upstream hf:<dir>, the transformers model the authors started from). UniPool models get
backend_conf.residual: reference, L-TDNN models eval_std: unbiased and LAP models
backend_conf.variant: authors, so they embed as the authors' code does.
"""
from __future__ import annotations

import logging

from upmp.bin.common import make_parser, require_writable, run_main, setup_logging

logger = logging.getLogger("import_checkpoint")


def get_parser():
    from upmp.train.authors_checkpoint import KIND_NAMES
    p = make_parser(__doc__)
    p.add_argument("--from", dest="src", required=True,
                   help="the authors' checkpoint file, or its run folder (model_best.pt / best_tracking.txt)")
    p.add_argument("--kind", required=True, choices=KIND_NAMES, help="the authors' model that wrote it")
    p.add_argument("--upstream", required=True,
                   help="the upstream it was trained on: an S3PRL name, or hf:<dir> (a transformers save_pretrained dir)")
    p.add_argument("--upstream_ckpt", default=None, help="the upstream's checkpoint (S3PRL *_local names)")
    p.add_argument("--out", required=True, help="the experiment dir to write (new or empty; exp/<name>)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_writable(args.out)
    from upmp.train.authors_checkpoint import import_checkpoint
    out = import_checkpoint(args.src, args.kind, args.upstream, args.upstream_ckpt, args.out)
    logger.info("wrote %s (%s from %s)", out, args.kind, args.src)


if __name__ == "__main__":
    run_main(main)
