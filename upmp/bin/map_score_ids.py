"""Rewrite a score file's utterance ids through a map (an imported set's utt_map: `<our id> <source id>`).

    python -m upmp.bin.map_score_ids --utt_map data/test/utt_map --scores exp/x/scores/test.cosine \
        --out exp/x/scores/test.cosine.source_ids

Lines keep their order; an id the map does not know is an error naming the score file's line.
"""
from __future__ import annotations

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.scoring.files import write_source_ids


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--utt_map", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(utt_map=args.utt_map, scores=args.scores)
    write_source_ids(args.utt_map, args.scores, args.out)


if __name__ == "__main__":
    run_main(main)
