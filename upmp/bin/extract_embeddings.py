"""Speaker embeddings from a trained backend, from cached layer stacks or straight from audio.

    # cached: the layer stacks of stage 1
    python -m upmp.bin.extract_embeddings --model exp/upmp/model.pt \
        --layers_scp dump/voxceleb1_test/layers.scp --out_dir exp/upmp/embeddings/voxceleb1_test \
        [--utt2spk data/voxceleb1_test/utt2spk] [--crop_seconds 3 --num_crops 5]
    # online: the frozen upstream runs here, nothing is cached
    python -m upmp.bin.extract_embeddings --model exp/upmp/model.pt --data_dir data/voxceleb1_test \
        --upstream wavlm_base_plus --out_dir exp/upmp/embeddings/voxceleb1_test

Writes xvector.ark/scp (one float vector per utterance, Kaldi/WeSpeaker style, not
length-normalised), utt2dur (seconds of each layer stack: a quality measure for QMF
calibration) and, with --utt2spk (or --data_dir), spk_xvector.ark/scp (mean of the
length-normalised utterance embeddings per speaker). Full utterances by
default, as in the paper; --crop_seconds/--num_crops average evenly spaced crops.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from upmp.bin.common import fail, set_num_threads, setup_logging
from upmp.data.kaldi_dir import DataDir, DataDirError, read_table
from upmp.embeddings import embed_utterances, upstream_stacks
from upmp.fileio import atomic_write_text
from upmp.scoring.scorers import speaker_means
from upmp.upstream.layer_stack import LayerStackMeta, load_stack

logger = logging.getLogger("extract_embeddings")


def _write_vectors(out: Path, name: str, items) -> None:
    """<name>.ark and <name>.scp; the scp is renamed into place last, so an existing scp is complete."""
    import kaldiio
    tmp = out / f".{name}.scp.tmp"
    with kaldiio.WriteHelper(f"ark,scp:{out}/{name}.ark,{tmp}") as w:
        for key, vector in items:
            w(key, vector)
    os.replace(tmp, out / f"{name}.scp")


def write_embeddings(out: Path, embeddings: dict, utt2spk: dict = None) -> None:
    """xvector.ark/scp and, with utt2spk, spk_xvector.ark/scp (written first: a present
    xvector.scp means the directory is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("xvector.scp", "spk_xvector.scp"):
        (out / name).unlink(missing_ok=True)
    if utt2spk:
        utts = sorted(u for u in embeddings if u in utt2spk)
        labels = [utt2spk[u] for u in utts]
        means = speaker_means(np.stack([embeddings[u] for u in utts]), labels)  # rows: sorted speakers
        _write_vectors(out, "spk_xvector", zip(sorted(set(labels)), means.astype(np.float32)))
    _write_vectors(out, "xvector", ((u, embeddings[u]) for u in sorted(embeddings)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.pt written by upmp.bin.train")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--layers_scp", help="cached layer stacks (stage 1)")
    src.add_argument("--data_dir", help="Kaldi data dir: run the upstream online")
    p.add_argument("--upstream", default=None, help="online: ge2e, hf:<dir> or an S3PRL name")
    p.add_argument("--upstream_ckpt", default=None)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--utt2spk", default=None, help="also write per-speaker mean embeddings")
    p.add_argument("--crop_seconds", type=float, default=0.0, help="0: full utterances")
    p.add_argument("--num_crops", type=int, default=1)
    p.add_argument("--max_batch_frames", type=int, default=6000)
    p.add_argument("--chunk_size", type=int, default=256, help="utterances held in memory at once")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=2)
    args = p.parse_args(argv)
    setup_logging()
    set_num_threads(args.num_threads)
    from upmp.checkpoint import load_model, load_upstream
    try:
        model, meta = load_model(args.model, args.device)
        finetuned = model.finetuned_upstream
        if args.layers_scp:
            if finetuned is not None:
                raise ValueError(f"{args.model} fine-tuned its upstream ({finetuned['name']}): cached layer stacks "
                                 "of the original upstream do not fit it; use --data_dir")
            entries = read_table(args.layers_scp)
            data_meta = LayerStackMeta.read(str(Path(args.layers_scp).parent))
            utts, utt2spk = list(entries), read_table(args.utt2spk) if args.utt2spk else None
        else:
            if not args.upstream and finetuned is None:
                raise ValueError("--data_dir needs --upstream")
            upstream = args.upstream or finetuned["name"]
            ckpt = args.upstream_ckpt or (finetuned or {}).get("ckpt")
            data = DataDir.load(args.data_dir)
            extractor = load_upstream(upstream, ckpt, args.device, finetuned)
            data_meta = LayerStackMeta(extractor.num_layers, extractor.dim, extractor.frame_shift, upstream)
            utts, utt2spk = data.utts, data.utt2spk
    except (DataDirError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if (data_meta.num_layers, data_meta.dim) != (meta.num_layers, meta.dim):
        fail(f"{args.layers_scp or args.upstream}: layer stacks are L={data_meta.num_layers} x D={data_meta.dim} "
             f"({data_meta.upstream}) but the model was trained on L={meta.num_layers} x D={meta.dim} ({meta.upstream})")
    crop_frames = int(round(args.crop_seconds / meta.frame_shift)) if args.crop_seconds > 0 else 0

    frames = {}  # utt -> T of its full stack: utt2dur, a quality measure for QMF calibration

    def stacks_of(chunk):
        if args.layers_scp:
            stacks = (load_stack(entries[utt], meta.num_layers) for utt in chunk)
        else:
            stacks = upstream_stacks(extractor, data, chunk, args.device, source=f"{args.data_dir}/wav.scp")
        for utt, stack in zip(chunk, stacks):
            frames[utt] = stack.shape[1]
            yield stack

    embeddings = {}
    with tqdm(total=len(utts), desc="embeddings", mininterval=5) as bar:
        for start in range(0, len(utts), args.chunk_size):
            chunk = utts[start:start + args.chunk_size]
            try:
                emb = embed_utterances(model, stacks_of(chunk), crop_frames, args.num_crops,
                                       args.max_batch_frames, args.device)
            except DataDirError as e:
                fail(str(e))
            embeddings.update(zip(chunk, emb))
            bar.update(len(chunk))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "utt2dur", "".join(f"{u} {frames[u] * meta.frame_shift:.3f}\n" for u in sorted(frames)))
    write_embeddings(out, embeddings, utt2spk)
    logger.info("wrote %d embeddings of dim %d to %s/xvector.scp", len(embeddings), model.embed_dim, args.out_dir)


if __name__ == "__main__":
    main()
