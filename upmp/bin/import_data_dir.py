"""Import Kaldi / ESPnet / WeSpeaker data dirs prepared elsewhere into our data/<name>.

    python -m upmp.bin.import_data_dir --src /their/kaldi/data/vox1_test --data_root data \
        [--trials /their/trials/vox1_O_cleaned.kaldi] [--require_trials] [--src_root /their/recipe]
    # sv.sh: sets as --test_sets gives them, names or paths; --trials one list per set
    python -m upmp.bin.import_data_dir --src vox1_o /their/data/vox1_h --trials o.txt h.kaldi
    # after stage 0 has written data/vox1_o: its list o.txt into data/vox1_o/trials
    python -m upmp.bin.import_data_dir --src vox1_o /their/data/vox1_h --trials o.txt h.kaldi --convert_ours

A set given by name (no '/'), or as a path to <data_root>/<its name>, is ours and used as it
is; any other is imported with its trial list. Prints the set names under <data_root>
(space-separated, in order) on stdout; logs on stderr. The trial lists given for sets of ours
are converted into their trials with --convert_ours (which imports and prints nothing), once
the sets exist. The sources are only read. See upmp.data.import_dir for the files read and
written and the rules.
"""
from __future__ import annotations

import logging
from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.import_dir import convert_listed_trials, is_ours, use_sets

logger = logging.getLogger("import_data_dir")


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
    p.add_argument("--convert_ours", action="store_true",
                   help="convert the trial lists given for sets of ours into their trials (after stage 0 wrote "
                        "the sets); import nothing")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.convert_ours:
        convert_listed_trials(args.src, args.trials, args.data_root)
        return
    print(" ".join(use_sets(args.src, args.data_root, args.trials, args.require_trials, args.src_root)))
    for spec, listed in zip(args.src, args.trials):
        if is_ours(spec, args.data_root):  # said, not dropped silently (sv.sh converts after stage 0)
            logger.info("%s, the list of %s (a set of ours), is converted by --convert_ours once %s exists "
                        "(sv.sh: after stage 0), not by this import", listed, spec, Path(args.data_root) / Path(spec).name)


if __name__ == "__main__":
    run_main(main)
