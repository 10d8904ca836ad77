"""Convert a data dir's audio (e.g. VoxCeleb2's m4a pipes) once to flac or wav files, and point
its wav.scp at them (see upmp.data.convert_audio).

    run.pl JOB=1:8 log/convert.JOB.log python -m upmp.bin.convert_audio --data_dir data/voxceleb2_dev \
        --out_dir audio/voxceleb2 --format flac --job JOB --num_jobs 8     # the shares, in parallel
    python -m upmp.bin.convert_audio --data_dir data/voxceleb2_dev --out_dir audio/voxceleb2 \
        --format flac                    # converts what is still missing, then rewrites wav.scp + utt2dur

Resumable: files already converted are skipped (each is written under a temporary name and renamed).
"""
from __future__ import annotations

import argparse
import logging

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.data.convert_audio import FORMATS, convert_share, point_wav_scp

logger = logging.getLogger("convert_audio")


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True, help="converted files go to <out_dir>/<speaker>/<key>.<format>")
    p.add_argument("--format", default="flac", choices=FORMATS)
    p.add_argument("--job", type=int, default=0, help="convert only this share (1..num_jobs); 0: all, then rewrite wav.scp")
    p.add_argument("--num_jobs", type=int, default=1)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    done, skipped = convert_share(args.data_dir, args.out_dir, args.format, args.job, args.num_jobs)
    logger.info("%s: converted %d files to %s, %d were already converted", args.data_dir, done, args.format, skipped)
    if args.job == 0:
        n = point_wav_scp(args.data_dir, args.out_dir, args.format)
        logger.info("%s/wav.scp: %d entries point at %s", args.data_dir, n, args.out_dir)


if __name__ == "__main__":
    run_main(main)
