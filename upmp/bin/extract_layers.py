"""Extract all hidden states of a frozen upstream for a Kaldi data dir (one stage-1 job).

    python -m upmp.bin.extract_layers --data_dir data/test --out_prefix dump/test/layers.1 \
        --upstream wavlm_base_plus [--upstream_ckpt ckpt.pt] [--storage int8] [--layers 0,4,8,12] \
        [--source_data_dir data/test]

Writes <out_prefix>.ark/.scp (one (T, L*D) matrix per utterance, see upmp.data.layer_stacks)
and layer_stack.json beside them (with --layers, only those hidden states, recorded there so
training and embedding use the same subset); the scp appears only once every utterance is written
(upmp.upstream.extract). With --source_data_dir (the user's data dir that --data_dir is a split
copy of), audio errors name its wav.scp line.
"""
from __future__ import annotations

from pathlib import Path

from upmp.bin.common import add_device_args, check_device, make_parser, run_main, set_num_threads, setup_logging
from upmp.data.audio import MIN_SAMPLES
from upmp.data.kaldi_dir import DataDir
from upmp.upstream import build_upstream
from upmp.upstream.extract import extract_layer_stacks, weights_id
from upmp.data.layer_stacks import LAYERS_FORMS, STORAGE_TYPES, parse_layers


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_prefix", required=True, help="writes <prefix>.ark and <prefix>.scp")
    p.add_argument("--upstream", required=True,
                   help="ge2e, hf:<dir>, or an S3PRL name (wavlm_base_plus, wavlm_local + --upstream_ckpt, ...)")
    p.add_argument("--upstream_ckpt", default=None, help="checkpoint path for *_local upstreams")
    p.add_argument("--storage", default="float32", choices=STORAGE_TYPES,
                   help="int8: a quarter of float32, a float16 scale and offset per (frame, hidden state) row")
    p.add_argument("--layers", default="all", help=f"the upstream's hidden states to keep: {LAYERS_FORMS}")
    p.add_argument("--max_batch_seconds", type=float, default=0.0,
                   help="padded audio per batch; 0 (default): one utterance per forward, which keeps "
                        "features independent of batching (padding changes them for GroupNorm front ends)")
    p.add_argument("--chunk_size", type=int, default=256, help="utterances loaded at once")
    p.add_argument("--source_data_dir", default=None,
                   help="the data dir --data_dir was split from: audio errors name its wav.scp line")
    p.add_argument("--purpose", default="test", choices=("train", "test"),
                   help="train: audio shorter than the upstream's receptive field is an error; test: a warning")
    add_device_args(p, num_threads=1)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    check_device(args.device)
    data = DataDir.load(args.data_dir)
    parse_layers(args.layers)  # a malformed value fails before the upstream loads
    extractor = build_upstream(args.upstream, args.upstream_ckpt).to(args.device)
    layers = parse_layers(args.layers, extractor.num_layers)
    extract_layer_stacks(extractor, data, args.out_prefix, args.storage, args.max_batch_seconds, args.chunk_size,
                         args.device, source_dir=args.source_data_dir or args.data_dir,
                         upstream_name=args.upstream, desc=f"layers {Path(args.data_dir).name}",
                         min_samples=MIN_SAMPLES, strict=args.purpose == "train", layers=layers,
                         weights=weights_id(args.upstream, args.upstream_ckpt))


if __name__ == "__main__":
    run_main(main)
