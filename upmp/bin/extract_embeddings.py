"""Speaker embeddings from a trained backend, from cached layer stacks or straight from audio.

    # cached: the layer stacks of stage 1
    python -m upmp.bin.extract_embeddings --model exp/upmp/model.pt \
        --layers_scp dump/voxceleb1_test/layers.scp --out_dir exp/upmp/embeddings/voxceleb1_test \
        [--utt2spk data/voxceleb1_test/utt2spk] [--crop_seconds 3 --num_crops 5]
    # online: the frozen upstream runs here, nothing is cached
    python -m upmp.bin.extract_embeddings --model exp/upmp/model.pt --data_dir data/voxceleb1_test \
        --upstream wavlm_base_plus --out_dir exp/upmp/embeddings/voxceleb1_test

Writes xvector.ark/scp (one float vector per utterance, Kaldi/WeSpeaker style, not
length-normalised), model.sha256 (`<sha256>  <--model>`: which model file made them;
package_model checks it), utt2dur (seconds of each layer stack: a quality measure for QMF
calibration) and, with --utt2spk (or --data_dir), spk_xvector.ark/scp (mean of the
length-normalised utterance embeddings per speaker). Full utterances by
default, as in the paper; --crop_seconds/--num_crops average evenly spaced crops.
Layer stacks must come from the model's upstream (name and L x D, from layer_stack.json);
--allow_other_upstream accepts another upstream of the same L x D.
Then xvector.scp.done, the record of what they were made from; with --check nothing is computed: it
prints `complete` (and logs that it skips) when that record says the outputs are complete and up to
date, else `stale` (sv.sh's stage 3 asks before it starts a job; rules: upmp.stages.extract_embeddings);
consistent outputs made before the records are adopted: their record is written and it prints `complete`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from upmp.bin.common import add_device_args, check_device, make_parser, require_files, run_main, set_num_threads, setup_logging
from upmp.stages.extract_embeddings import embeddings_done, extract_embeddings

logger = logging.getLogger("extract_embeddings")


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model.pt written by upmp.bin.train")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--layers_scp", help="cached layer stacks (stage 1)")
    src.add_argument("--data_dir", help="Kaldi data dir: run the upstream online")
    p.add_argument("--upstream", default=None, help="online: ge2e, hf:<dir> or an S3PRL name")
    p.add_argument("--upstream_ckpt", default=None)
    p.add_argument("--allow_other_upstream", action="store_true",
                   help="accept layer stacks of another upstream than the model's (same L x D)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--utt2spk", default=None, help="also write per-speaker mean embeddings")
    p.add_argument("--crop_seconds", type=float, default=0.0, help="0: full utterances")
    p.add_argument("--num_crops", type=int, default=1)
    p.add_argument("--max_batch_frames", type=int, default=6000)
    p.add_argument("--chunk_size", type=int, default=256, help="utterances held in memory at once")
    add_device_args(p)
    p.add_argument("--check", action="store_true",
                   help="compute nothing: print complete (the outputs are up to date) or stale")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.check:
        verdict = embeddings_done(args.model, args.out_dir, args.layers_scp, args.data_dir, args.upstream,
                                  args.upstream_ckpt, args.utt2spk, args.crop_seconds, args.num_crops)
        if verdict:
            logger.info("%s/xvector.scp is complete, skipping (delete it to extract again)", args.out_dir)
        elif Path(args.out_dir, "xvector.scp").is_file():
            logger.info("%s/xvector.scp is out of date (%s): extracting again", args.out_dir, verdict.reason)
        print("complete" if verdict else "stale")
        return
    set_num_threads(args.num_threads)
    check_device(args.device)
    require_files(utt2spk=args.utt2spk)
    extract_embeddings(args.model, args.out_dir, args.layers_scp, args.data_dir, args.upstream, args.upstream_ckpt,
                       args.allow_other_upstream, args.utt2spk, args.crop_seconds, args.num_crops,
                       args.max_batch_frames, args.chunk_size, args.device)


if __name__ == "__main__":
    run_main(main)
