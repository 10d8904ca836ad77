"""VoxCeleb1 on-disk tree -> Kaldi data dirs <out>/voxceleb1_dev and <out>/voxceleb1_test (+ trials).

    python -m upmp.bin.prepare_voxceleb1 --root /data/VoxCeleb1 --out data [--trials veri_test2.txt]
    python -m upmp.bin.prepare_voxceleb1 --root /data/VoxCeleb1 --out data --test_only --extended

--test_only writes the test set(s) alone, for models trained on VoxCeleb2; --extended (with
--test_only) adds voxceleb1_e / voxceleb1_h from list_test_all2.txt / list_test_hard2.txt when
present. Vox1-E/H pair VoxCeleb1 development speakers, so they are refused for a model trained
on voxceleb1_dev. --trials may be the paper's CSV (trials-vox1.csv, LABEL,SAMPLE1,SAMPLE2).
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.recipes.voxceleb import prepare_voxceleb1


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="VoxCeleb1 root holding the wav tree(s), vox1_meta.csv and lists")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    p.add_argument("--trials", default="veri_test2.txt",
                   help="Vox1-O list under --root (or an absolute path); .csv = the paper's format")
    p.add_argument("--dev_name", default="voxceleb1_dev")
    p.add_argument("--test_name", default="voxceleb1_test")
    p.add_argument("--valid_speakers", type=int, default=0,
                   help="hold out this many dev speakers as a validation set with balanced trials")
    p.add_argument("--valid_name", default="voxceleb1_valid")
    p.add_argument("--valid_targets_per_speaker", type=int, default=0,
                   help="at most this many target trials per validation speaker (0: all cross-session pairs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation trials")
    p.add_argument("--test_only", action="store_true", help="write the test set(s) only")
    p.add_argument("--extended", action="store_true",
                   help="with --test_only: also Vox1-E / Vox1-H when their lists are present")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare_voxceleb1(args.root, args.out, args.trials, args.dev_name, args.test_name,
                      args.valid_speakers, args.valid_name, args.seed,
                      args.valid_targets_per_speaker or None, args.test_only, args.extended)


if __name__ == "__main__":
    run_main(main)
