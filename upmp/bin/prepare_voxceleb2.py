"""VoxCeleb2 dev tree -> Kaldi data dir <out>/voxceleb2_dev (+ a held-out validation set with trials).

    python -m upmp.bin.prepare_voxceleb2 --root /data/VoxCeleb2 --out data \
        [--audio auto|m4a|wav] [--valid_speakers 100 --valid_targets_per_speaker 50]

Reads <root>/dev/aac/<id>/<video>/<n>.m4a (wav.scp gets `ffmpeg ... |` pipes, no utt2dur)
or the converted <root>/dev/wav/.../<n>.wav (utt2dur from the headers); --audio auto takes
dev/wav when it exists. vox2_meta.csv, when present, must list every speaker as dev.
Test sets come from VoxCeleb1: upmp.bin.prepare_voxceleb1 --test_only --extended.

    python -m upmp.bin.prepare_voxceleb2 --root /data/VoxCeleb2 --out data --test_valid [--valid_trials 64000]

--test_valid writes <out>/voxceleb2_test_valid alone (or --valid_name): the UniPool authors'
validation list for VoxCeleb1-trained models, balanced trials over the Vox2 test speakers
(<root>/test/aac or test/wav) by the rules of their trials-vox2.csv script, seeded with --seed.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.errors import ConfigError
from upmp.recipes.voxceleb import AUTHORS_VALID_TRIALS, prepare_voxceleb2, prepare_voxceleb2_test_valid


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="VoxCeleb2 root holding dev/aac (or dev/wav) and vox2_meta.csv")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    p.add_argument("--audio", default="auto", choices=["auto", "m4a", "wav"])
    p.add_argument("--dev_name", default="voxceleb2_dev")
    p.add_argument("--valid_speakers", type=int, default=0,
                   help="hold out this many dev speakers as a validation set with balanced trials")
    p.add_argument("--valid_name", default=None, help="[voxceleb2_valid; with --test_valid: voxceleb2_test_valid]")
    p.add_argument("--valid_targets_per_speaker", type=int, default=0,
                   help="at most this many target trials per validation speaker (0: all cross-session pairs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation trials")
    p.add_argument("--test_valid", action="store_true",
                   help="write only the authors' validation list over the Vox2 test speakers (test/aac or test/wav)")
    p.add_argument("--valid_trials", type=int, default=AUTHORS_VALID_TRIALS,
                   help="with --test_valid: about this many trials, half targets (the authors' --total_sample_size)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.test_valid:
        if args.valid_speakers:
            raise ConfigError("--valid_speakers holds out dev speakers; --test_valid reads the test speakers only: "
                              "give one of the two")
        prepare_voxceleb2_test_valid(args.root, args.out, args.valid_name or "voxceleb2_test_valid", args.seed,
                                     args.valid_trials, args.audio)
        return
    prepare_voxceleb2(args.root, args.out, args.dev_name, args.valid_speakers, args.valid_name or "voxceleb2_valid",
                      args.seed, args.valid_targets_per_speaker or None, args.audio)


if __name__ == "__main__":
    run_main(main)
