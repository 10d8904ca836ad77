"""VoxCeleb1 on-disk tree -> Kaldi data dirs <out>/voxceleb1_dev and <out>/voxceleb1_test (+ trials).

    python -m upmp.bin.prepare_voxceleb1 --root /data/VoxCeleb1 --out data [--trials veri_test2.txt]
"""
from __future__ import annotations

import argparse

from upmp.bin.common import fail, setup_logging
from upmp.data.kaldi_dir import DataDirError
from upmp.data.voxceleb import prepare_voxceleb1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="VoxCeleb1 root holding wav/, vox1_meta.csv and the trial list")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    p.add_argument("--trials", default="veri_test2.txt", help="trial list file name under --root")
    p.add_argument("--dev_name", default="voxceleb1_dev")
    p.add_argument("--test_name", default="voxceleb1_test")
    p.add_argument("--valid_speakers", type=int, default=0,
                   help="hold out this many dev speakers as a validation set with balanced trials")
    p.add_argument("--valid_name", default="voxceleb1_valid")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation trials")
    args = p.parse_args(argv)
    setup_logging()
    try:
        prepare_voxceleb1(args.root, args.out, args.trials, args.dev_name, args.test_name,
                          args.valid_speakers, args.valid_name, args.seed)
    except DataDirError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
