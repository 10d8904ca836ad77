"""Generate the synthetic VoxCeleb1-layout corpus of the mini recipe.

    python -m upmp.bin.make_mini_corpus --out downloads/mini_vox1 --num_speakers 48 --seed 0
"""
from __future__ import annotations

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.recipes.mini_corpus import make_corpus
from upmp.errors import ConfigError


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--num_speakers", type=int, default=48)
    p.add_argument("--num_test_speakers", type=int, default=12)
    p.add_argument("--sessions_per_speaker", type=int, default=3)
    p.add_argument("--utts_per_session", type=int, default=4)
    p.add_argument("--min_seconds", type=float, default=3.0)
    p.add_argument("--max_seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nj", type=int, default=2)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not 2 <= args.num_test_speakers < args.num_speakers:
        raise ConfigError(f"need 2 <= --num_test_speakers < --num_speakers, got {args.num_test_speakers} "
                          f"of {args.num_speakers}")
    make_corpus(args.out, args.num_speakers, args.num_test_speakers, args.sessions_per_speaker,
                args.utts_per_session, args.min_seconds, args.max_seconds, args.seed, args.nj)


if __name__ == "__main__":
    run_main(main)
