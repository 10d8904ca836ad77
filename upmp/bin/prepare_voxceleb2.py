"""VoxCeleb2 dev tree -> Kaldi data dir <out>/voxceleb2_dev (+ a held-out validation set with trials).

    python -m upmp.bin.prepare_voxceleb2 --root /data/VoxCeleb2 --out data \
        [--audio auto|m4a|wav] [--valid_speakers 100 --valid_targets_per_speaker 50]

Reads <root>/dev/aac/<id>/<video>/<n>.m4a (wav.scp gets `ffmpeg ... |` pipes, no utt2dur)
or the converted <root>/dev/wav/.../<n>.wav (utt2dur from the headers); --audio auto takes
dev/wav when it exists. vox2_meta.csv, when present, must list every speaker as dev.
Test sets come from VoxCeleb1: upmp.bin.prepare_voxceleb1 --test_only --extended.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.recipes.voxceleb import prepare_voxceleb2


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="VoxCeleb2 root holding dev/aac (or dev/wav) and vox2_meta.csv")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    p.add_argument("--audio", default="auto", choices=["auto", "m4a", "wav"])
    p.add_argument("--dev_name", default="voxceleb2_dev")
    p.add_argument("--valid_speakers", type=int, default=0,
                   help="hold out this many dev speakers as a validation set with balanced trials")
    p.add_argument("--valid_name", default="voxceleb2_valid")
    p.add_argument("--valid_targets_per_speaker", type=int, default=0,
                   help="at most this many target trials per validation speaker (0: all cross-session pairs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation trials")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare_voxceleb2(args.root, args.out, args.dev_name, args.valid_speakers, args.valid_name, args.seed,
                      args.valid_targets_per_speaker or None, args.audio)


if __name__ == "__main__":
    run_main(main)
