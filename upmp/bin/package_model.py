"""Package a trained experiment into one self-contained model directory.

    python -m upmp.bin.package_model --exp_dir exp/upmp_ge2e --out models/upmp_ge2e

Needs stages 2-3 (model.pt, embeddings/<train set>/xvector.scp and, with a validation list,
embeddings/<valid set>/xvector.scp). Writes the backend weights, the resolved config, the
upstream (its checkpoint copied in for *_local / hf:<dir> / fine-tuned upstreams), the
layer-stack layout, the training-set mean embedding, the calibration and EER threshold of the
validation list (scored as the package scores: cosine after mean subtraction) and a model card
(README.md). Layout and format: upmp/inference/package.py. Load it with `upmp.load_model(DIR)`.
Paths recorded by training (relative to the recipe dir) are looked up from the current
directory, then from <exp_dir>/../..
"""
from __future__ import annotations

import argparse
import logging

from upmp.bin.common import make_parser, require_writable, run_main, setup_logging
from upmp.fileio import named_in_errors

logger = logging.getLogger("package_model")


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--exp_dir", required=True, help="experiment dir of stages 2-3 (exp/<name>)")
    p.add_argument("--out", required=True,
                   help="package directory to write (a new or empty dir; an earlier package there is replaced "
                        "atomically once the new one is complete)")
    p.add_argument("--model", default=None, help="checkpoint to package [<exp_dir>/model.pt]")
    p.add_argument("--train_embeddings", default=None,
                   help="xvector.scp of the training set (the mean) [<exp_dir>/embeddings/<train set>/xvector.scp]")
    p.add_argument("--valid_trials", default=None, help="validation trials (Kaldi) [the training run's]")
    p.add_argument("--valid_embeddings", default=None,
                   help="xvector.scp of the validation set [<exp_dir>/embeddings/<valid set>/xvector.scp]")
    p.add_argument("--upstream", default=None, help="the upstream's name [the training run's]")
    p.add_argument("--upstream_ckpt", default=None,
                   help="its checkpoint (needed for *_local upstreams of cached training, which records the name only)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_writable(args.out)  # before the model is read: a bad --out is one line, not a traceback at the end
    from upmp.fileio import output_lock
    from upmp.inference import load_checkpoint
    from upmp.inference.package import check_out, collect_experiment, remove_stale_temps, write_package
    out = check_out(args.out, args.exp_dir)
    created = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # the lock creates them
    try:
        with output_lock(args.out, out.parent / f".{out.name}.lock"):  # one writer per --out
            check_out(args.out, args.exp_dir)  # again, now that no other run writes it
            remove_stale_temps(str(out))
            content = collect_experiment(args.exp_dir, args.model, args.train_embeddings, args.valid_embeddings,
                                         args.valid_trials, load_checkpoint=load_checkpoint,
                                         upstream=args.upstream, upstream_ckpt=args.upstream_ckpt)
            with named_in_errors(args.out):
                out = write_package(content, args.out)
    except BaseException:  # a refused experiment or a failed write leaves no directory behind
        for d in created:  # the deepest first; one that another process filled meanwhile stays
            try:
                d.rmdir()
            except OSError:
                break
        raise
    t = content["info"]["threshold"]
    logger.info("wrote %s (%s%s)", out, content["info"]["upstream"]["name"],
                f", validation EER {t['eer']:.2f} % at score {t['score']:.4f}" if t else ", uncalibrated")



if __name__ == "__main__":
    run_main(main)
