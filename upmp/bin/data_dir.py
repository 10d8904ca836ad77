"""Kaldi data-dir tools (what utils/*.sh call; positionals as in Kaldi's utils).

    python -m upmp.bin.data_dir validate [--no-spk-sort] data/x
    python -m upmp.bin.data_dir fix data/x
    python -m upmp.bin.data_dir split [--per-utt] data/x N
    python -m upmp.bin.data_dir spk2utt < utt2spk > spk2utt
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.kaldi_dir import (DataDirError, fix_data_dir, split_data_dir, utt2spk_to_spk2utt,
                                 validate_data_dir)
from upmp.data.trials import check_trial_list, read_kaldi_trials

logger = logging.getLogger("data_dir")


def get_parser():
    p = make_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--no-spk-sort", action="store_true")
    v.add_argument("data_dir")
    f = sub.add_parser("fix")
    f.add_argument("data_dir")
    s = sub.add_parser("split")
    s.add_argument("--per-utt", action="store_true")
    s.add_argument("data_dir")
    s.add_argument("num_jobs", type=int)
    sub.add_parser("spk2utt")
    return p


def read_utt2spk_stream(stream, name: str = "<stdin>") -> dict:
    utt2spk = {}
    for lineno, line in enumerate(stream, 1):
        fields = line.split()
        if len(fields) != 2:
            raise DataDirError(f"{name}:{lineno}: expected '<utt> <spk>', got {line.rstrip()!r}")
        utt2spk[fields[0]] = fields[1]
    return utt2spk


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "validate":
        validate_data_dir(args.data_dir, spk_sort=not args.no_spk_sort)
        trials = Path(args.data_dir) / "trials"
        if trials.is_file():  # a pair labelled both ways is refused; repeats are reported
            check_trial_list(read_kaldi_trials(str(trials)), str(trials))
        print(f"Successfully validated data-directory {args.data_dir}")
    elif args.command == "fix":
        for w in fix_data_dir(args.data_dir):
            print(f"fix_data_dir: warning: {w}", file=sys.stderr)
    elif args.command == "split":
        split_data_dir(args.data_dir, args.num_jobs, per_utt=args.per_utt)
    else:
        for spk, utts in utt2spk_to_spk2utt(read_utt2spk_stream(sys.stdin)).items():
            print(spk, " ".join(utts))


if __name__ == "__main__":
    run_main(main)
