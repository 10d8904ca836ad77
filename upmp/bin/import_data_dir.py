"""Import a Kaldi / ESPnet / WeSpeaker data dir prepared elsewhere into our data/<name>.

    python -m upmp.bin.import_data_dir --src /their/kaldi/data/vox1_test --data_root data \
        [--trials /their/trials/vox1_O_cleaned.kaldi] [--require_trials] [--src_root /their/recipe]

Prints the chosen set name (data/<name>) on stdout; logs on stderr. The source is only
read. See upmp.data.import_dir for the files read and written and the rules.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.import_dir import import_data_dir


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--src", required=True, help="the data dir to import (read only)")
    p.add_argument("--data_root", default="data", help="our data dir root: writes <data_root>/<name>")
    p.add_argument("--trials", default=None,
                   help="trial list (Kaldi, WeSpeaker .kaldi, VoxCeleb, ESPnet trial_label or trial.scp); "
                        "default: the source dir's trials or trial_label")
    p.add_argument("--require_trials", action="store_true", help="fail when there is no trial list")
    p.add_argument("--src_root", default=None,
                   help="dir that relative audio paths start from (default: the nearest of the source dir "
                        "and its parents under which they exist)")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    result = import_data_dir(args.src, args.data_root, args.trials, args.require_trials, args.src_root)
    print(result.name)


if __name__ == "__main__":
    run_main(main)
