"""Import Kaldi / ESPnet / WeSpeaker data dirs prepared elsewhere into our data/<name>.

    python -m upmp.bin.import_data_dir --src /their/kaldi/data/vox1_test --data_root data \
        [--trials /their/trials/vox1_O_cleaned.kaldi] [--require_trials] [--src_root /their/recipe]
    # sv.sh: sets as --test_sets gives them, names or paths; --trials one list per set
    python -m upmp.bin.import_data_dir --src vox1_o /their/data/vox1_h --trials o.txt h.kaldi --ours_trials defer

A set given by name (no '/'), or as a path to <data_root>/<its name>, is ours and used as it
is; a trial list given for it is converted into its trials (--ours_trials now), or left for a
later call (defer: stage 0 has not written the set yet; only: convert those, import nothing).
Prints the set names under <data_root> (space-separated, in order) on stdout; logs on stderr.
The sources are only read. See upmp.data.import_dir for the files read and written and the rules.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.import_dir import OURS_TRIALS, use_sets


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--src", required=True, nargs="+", help="the data dirs to import (read only), or names of ours")
    p.add_argument("--data_root", default="data", help="our data dir root: writes <data_root>/<name>")
    p.add_argument("--trials", nargs="*", default=[],
                   help="trial lists, one per --src (Kaldi, WeSpeaker .kaldi, VoxCeleb, ESPnet trial_label or "
                        "trial.scp); default: the source dir's trials or trial_label")
    p.add_argument("--require_trials", action="store_true", help="fail when there is no trial list")
    p.add_argument("--src_root", default=None,
                   help="dir that relative audio paths start from (default: the nearest of the source dir "
                        "and its parents under which they exist)")
    p.add_argument("--ours_trials", choices=OURS_TRIALS, default="now",
                   help="trial lists of sets of ours: now: convert them; defer: leave them for a later call; "
                        "only: convert them, import no other set")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    print(" ".join(use_sets(args.src, args.data_root, args.trials, args.require_trials, args.ours_trials,
                            args.src_root)))


if __name__ == "__main__":
    run_main(main)
