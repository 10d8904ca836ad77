"""Speaker embeddings from a trained backend over full utterances.

    python -m upmp.bin.extract_embeddings --model exp/upmp/model.pt \
        --layers_scp dump/voxceleb1_test/layers.scp --out_dir exp/upmp/embeddings/voxceleb1_test \
        [--utt2spk data/voxceleb1_test/utt2spk]

Writes xvector.ark/scp (one float vector per utterance, Kaldi/WeSpeaker style)
and, with --utt2spk, spk_xvector.ark/scp (mean of length-normalised
utterance embeddings per speaker). Utterances are batched by length with
frame masks; the backend's masking makes padding leave embeddings unchanged.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from upmp.bin.common import fail, set_num_threads, setup_logging
from upmp.data.kaldi_dir import DataDirError, read_table, utt2spk_to_spk2utt
from upmp.upstream.layer_stack import LayerStackMeta, batches_by_length, load_stack

logger = logging.getLogger("extract_embeddings")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.pt written by upmp.bin.train")
    p.add_argument("--layers_scp", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--utt2spk", default=None, help="also write per-speaker mean embeddings")
    p.add_argument("--max_batch_frames", type=int, default=6000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=2)
    args = p.parse_args(argv)
    setup_logging()
    set_num_threads(args.num_threads)
    import kaldiio
    from upmp.train.trainer import load_model
    try:
        model, meta = load_model(args.model, args.device)
        entries = read_table(args.layers_scp)
        data_meta = LayerStackMeta.read(str(Path(args.layers_scp).parent))
    except (DataDirError, FileNotFoundError) as e:
        fail(str(e))
    if (data_meta.num_layers, data_meta.dim) != (meta.num_layers, meta.dim):
        fail(f"{args.layers_scp}: layer stacks are L={data_meta.num_layers} x D={data_meta.dim} "
             f"({data_meta.upstream}) but the model was trained on L={meta.num_layers} x D={meta.dim} ({meta.upstream})")
    utts = list(entries)
    stacks = [load_stack(entries[u], meta.num_layers) for u in utts]  # each (L, T, D)
    lengths = [s.shape[1] for s in stacks]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    embeddings = {}
    with torch.no_grad(), tqdm(total=len(utts), desc="embeddings", mininterval=5) as bar:
        for batch in batches_by_length(lengths, args.max_batch_frames):
            T = max(lengths[i] for i in batch)
            L, _, D = stacks[batch[0]].shape
            x = np.zeros((len(batch), D, L, T), dtype=np.float32)
            mask = torch.zeros(len(batch), T, dtype=torch.bool)
            for row, i in enumerate(batch):
                x[row, :, :, :lengths[i]] = stacks[i].transpose(2, 0, 1)
                mask[row, :lengths[i]] = True
            emb = model(torch.from_numpy(x).to(args.device), mask.to(args.device)).cpu().numpy()
            for row, i in enumerate(batch):
                embeddings[utts[i]] = emb[row].astype(np.float32)
            bar.update(len(batch))
    with kaldiio.WriteHelper(f"ark,scp:{out}/xvector.ark,{out}/xvector.scp") as w:
        for u in sorted(embeddings):
            w(u, embeddings[u])
    if args.utt2spk:
        spk2utt = utt2spk_to_spk2utt({u: s for u, s in read_table(args.utt2spk).items() if u in embeddings})
        with kaldiio.WriteHelper(f"ark,scp:{out}/spk_xvector.ark,{out}/spk_xvector.scp") as w:
            for spk, members in spk2utt.items():
                e = np.stack([embeddings[u] / np.linalg.norm(embeddings[u]) for u in members])
                w(spk, e.mean(axis=0).astype(np.float32))
    logger.info("wrote %d embeddings of dim %d to %s/xvector.scp", len(embeddings), model.embed_dim, out)


if __name__ == "__main__":
    main()
