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
"""
from __future__ import annotations

import logging
from pathlib import Path

from upmp.bin.common import add_device_args, check_device, make_parser, require_files, run_main, set_num_threads, setup_logging
from upmp.data.kaldi_dir import DataDir, read_table
from upmp.embeddings import check_stacks_fit, embed_all, upstream_stacks, write_embeddings, write_model_record
from upmp.errors import ConfigError, DataDirError, UpstreamError
from upmp.fileio import atomic_write_text
from upmp.data.layer_stacks import META_NAME, LayerStackMeta, load_stack

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
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    check_device(args.device)
    require_files(utt2spk=args.utt2spk)
    from upmp.checkpoint import load_model, load_upstream
    model, meta = load_model(args.model, args.device)
    finetuned = model.finetuned_upstream
    if args.layers_scp:
        if finetuned is not None:
            raise UpstreamError(f"{args.model} fine-tuned its upstream ({finetuned['name']}): cached layer stacks "
                                "of the original upstream do not fit it; use --data_dir")
        require_files(layers_scp=args.layers_scp)
        stacks_dir = Path(args.layers_scp).parent
        if not (stacks_dir / META_NAME).is_file():
            raise DataDirError(f"{stacks_dir / META_NAME}: missing beside {args.layers_scp}; extract layer stacks "
                               f"with upmp.bin.extract_layers (stage 1)")
        entries = read_table(args.layers_scp)
        data_meta = LayerStackMeta.read(str(stacks_dir))
        utts, utt2spk = list(entries), read_table(args.utt2spk) if args.utt2spk else None
        source = args.layers_scp
    else:
        if not args.upstream and finetuned is None:
            raise ConfigError("--data_dir needs --upstream")
        upstream = args.upstream or finetuned["name"]
        ckpt = args.upstream_ckpt or (finetuned or {}).get("ckpt")
        data = DataDir.load(args.data_dir)
        extractor = load_upstream(upstream, ckpt, args.device, finetuned)
        if meta.layers is not None and meta.layers[-1] < extractor.num_layers:  # the subset the model was trained on
            extractor.keep_layers(meta.layers)
        data_meta = LayerStackMeta(extractor.num_layers, extractor.dim, extractor.frame_shift, upstream,
                                   layers=extractor.kept_layers)
        utts, utt2spk = data.utts, data.utt2spk
        source = f"--upstream {upstream}"
    check_stacks_fit(data_meta, meta, source, args.allow_other_upstream)
    crop_frames = int(round(args.crop_seconds / meta.frame_shift)) if args.crop_seconds > 0 else 0

    frames = {}  # utt -> T of its full stack: utt2dur, a quality measure for QMF calibration

    def stacks_of(chunk):
        if args.layers_scp:
            stacks = (load_stack(entries[utt], meta.num_layers) for utt in chunk)
        else:
            stacks = upstream_stacks(extractor, data, chunk, args.device, source=f"{args.data_dir}/wav.scp")
        for utt, stack in zip(chunk, stacks):
            if stack.shape[1] < model.min_frames:  # e.g. the x-vector TDNN's context: no embedding at all
                raise DataDirError(f"{args.layers_scp or args.data_dir}: utterance {utt}: {stack.shape[1]} frames, the "
                                   f"backend needs at least {model.min_frames} ({1000 * model.min_frames * meta.frame_shift:.0f} "
                                   "ms); remove the utterance from the data dir")
            frames[utt] = stack.shape[1]
            yield stack

    embeddings = embed_all(model, utts, stacks_of, crop_frames, args.num_crops, args.max_batch_frames,
                           args.device, args.chunk_size)
    out = Path(args.out_dir)
    # before xvector.scp, which write_embeddings renames into place last (stage 3's completeness mark)
    atomic_write_text(out / "utt2dur", "".join(f"{u} {frames[u] * meta.frame_shift:.3f}\n" for u in sorted(frames)))
    write_model_record(out, args.model)  # package_model checks that it packages this model
    write_embeddings(out, embeddings, utt2spk)
    logger.info("wrote %d embeddings of dim %d to %s/xvector.scp", len(embeddings), model.embed_dim, args.out_dir)


if __name__ == "__main__":
    run_main(main)
