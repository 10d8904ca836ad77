"""VCTK corpus tree -> Kaldi data dirs <out>/vctk_{train,valid,test} (+ trials), the UniPool paper's protocol.

    python -m upmp.bin.prepare_vctk --root /data/VCTK-Corpus-0.92 --out data [--mic mic1|mic2]
        [--protocol_dir DIR] [--protocol_cache DIR] [--protocol_url URL|none] [--seed 0]

Speaker split and trials: --protocol_dir (layout of the paper's data files), else a download of
the paper's files into --protocol_cache, else regenerated with the same rules from --seed.
"""
from __future__ import annotations

from upmp.bin.common import add_protocol_args, make_parser, protocol_kwargs, run_main, setup_logging
from upmp.recipes.vctk import prepare_vctk


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="VCTK root holding wav48_silence_trimmed/ (or wav48/) and "
                                                 "speaker-info.txt")
    p.add_argument("--out", required=True, help="parent of the data dirs (usually data)")
    p.add_argument("--mic", default="mic1", choices=["mic1", "mic2"], help="VCTK 0.92 microphone")
    add_protocol_args(p)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    prepare_vctk(args.root, args.out, args.mic, **protocol_kwargs(args))


if __name__ == "__main__":
    run_main(main)
