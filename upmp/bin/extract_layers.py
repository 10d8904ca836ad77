"""Extract all hidden states of a frozen S3PRL upstream for a Kaldi data dir.

    python -m upmp.bin.extract_layers --data_dir data/test --out_prefix dump/test/layers.1 \
        --upstream wavlm_base_plus [--upstream_ckpt ckpt.pt] [--storage float16]

Writes <out_prefix>.ark/.scp (one (T, L*D) matrix per utterance, see
upmp.upstream.layer_stack) and layer_stack.json beside them.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from upmp.bin.common import fail, run_main, set_num_threads, setup_logging
from upmp.data.audio import MIN_SAMPLES, SAMPLE_RATE, load_utterance
from upmp.data.kaldi_dir import DataDir, DataDirError
from upmp.upstream import build_upstream
from upmp.upstream.layer_stack import STORAGE_TYPES, LayerStackMeta, LayerStackWriter, batches_by_length

logger = logging.getLogger("extract_layers")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_prefix", required=True, help="writes <prefix>.ark and <prefix>.scp")
    p.add_argument("--upstream", required=True,
                   help="ge2e, hf:<dir>, or an S3PRL name (wavlm_base_plus, wavlm_local + --upstream_ckpt, ...)")
    p.add_argument("--upstream_ckpt", default=None, help="checkpoint path for *_local upstreams")
    p.add_argument("--storage", default="float32", choices=STORAGE_TYPES)
    p.add_argument("--max_batch_seconds", type=float, default=0.0,
                   help="padded audio per batch; 0 (default): one utterance per forward, which keeps "
                        "features independent of batching (padding changes them for GroupNorm front ends)")
    p.add_argument("--chunk_size", type=int, default=256, help="utterances loaded at once")
    p.add_argument("--purpose", default="test", choices=("train", "test"),
                   help="train: audio shorter than the upstream's receptive field is an error; test: a warning")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    try:
        data = DataDir.load(args.data_dir)
        extractor = build_upstream(args.upstream, args.upstream_ckpt).to(args.device)
    except (DataDirError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    out_dir = Path(args.out_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    LayerStackMeta(extractor.num_layers, extractor.dim, extractor.frame_shift,
                   args.upstream, args.storage).write(str(out_dir))
    utts = data.utts
    max_samples = int(args.max_batch_seconds * SAMPLE_RATE)
    n_frames = 0
    with LayerStackWriter(args.out_prefix, args.storage) as writer, \
            tqdm(total=len(utts), desc=f"layers {Path(args.data_dir).name}", mininterval=5) as bar:
        for start in range(0, len(utts), args.chunk_size):
            chunk = utts[start:start + args.chunk_size]
            audio = []
            for utt in chunk:  # a bad file raises an AudioError-based DataDirError: one line by run_main
                audio.append(load_utterance(data, utt, f"{args.data_dir}/wav.scp", min_samples=MIN_SAMPLES,
                                            strict=args.purpose == "train"))
            for batch in batches_by_length([len(a) for a in audio], max_samples):
                lens = torch.tensor([len(audio[i]) for i in batch])
                wavs = torch.zeros(len(batch), int(lens.max()))
                for row, i in enumerate(batch):
                    wavs[row, :len(audio[i])] = torch.from_numpy(audio[i])
                stack, frames = extractor(wavs.to(args.device), lens.to(args.device))
                stack = stack.float().cpu().numpy()  # (B, D, L, T)
                for row, i in enumerate(batch):
                    t = int(frames[row])
                    writer.write(chunk[i], np.transpose(stack[row, :, :, :t], (1, 2, 0)))
                    n_frames += t
                bar.update(len(batch))
    logger.info("wrote %d utterances, %d frames, L=%d D=%d to %s.scp", len(utts), n_frames,
                extractor.num_layers, extractor.dim, args.out_prefix)


if __name__ == "__main__":
    run_main(main)
