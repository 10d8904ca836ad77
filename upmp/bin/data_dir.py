"""Kaldi data-dir tools (what utils/*.sh call).

    python -m upmp.bin.data_dir validate [--no-spk-sort] data/x
    python -m upmp.bin.data_dir fix data/x
    python -m upmp.bin.data_dir split [--per-utt] data/x N
    python -m upmp.bin.data_dir spk2utt < utt2spk > spk2utt
"""
from __future__ import annotations

import argparse
import sys

from upmp.bin.common import fail
from upmp.data.kaldi_dir import (DataDirError, fix_data_dir, split_data_dir, utt2spk_to_spk2utt,
                                 validate_data_dir)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args(argv)
    try:
        if args.command == "validate":
            validate_data_dir(args.data_dir, spk_sort=not args.no_spk_sort)
            print(f"Successfully validated data-directory {args.data_dir}")
        elif args.command == "fix":
            for w in fix_data_dir(args.data_dir):
                print(f"fix_data_dir: warning: {w}", file=sys.stderr)
        elif args.command == "split":
            split_data_dir(args.data_dir, args.num_jobs, per_utt=args.per_utt)
        else:
            utt2spk = {}
            for lineno, line in enumerate(sys.stdin, 1):
                fields = line.split()
                if len(fields) != 2:
                    raise DataDirError(f"<stdin>:{lineno}: expected '<utt> <spk>', got {line.rstrip()!r}")
                utt2spk[fields[0]] = fields[1]
            for spk, utts in utt2spk_to_spk2utt(utt2spk).items():
                print(spk, " ".join(utts))
    except DataDirError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
