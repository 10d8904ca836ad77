"""Rewrite a score file's utterance ids through a map (an imported set's utt_map: `<our id> <source id>`).

    python -m upmp.bin.map_score_ids --utt_map data/test/utt_map --scores exp/x/scores/test.cosine \
        --out exp/x/scores/test.cosine.source_ids

Lines keep their order; an id the map does not know is an error naming the score file's line.
"""
from __future__ import annotations

import argparse

from upmp.bin.common import fail
from upmp.data.kaldi_dir import DataDirError, read_table
from upmp.fileio import atomic_write_text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utt_map", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        mapping = read_table(args.utt_map)
        lines = []
        with open(args.scores, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if len(fields) != 3:
                    raise DataDirError(f"{args.scores}:{lineno}: expected '<utt1> <utt2> <score>', got {line.rstrip()!r}")
                for u in fields[:2]:
                    if u not in mapping:
                        raise DataDirError(f"{args.scores}:{lineno}: utterance {u!r} is not in {args.utt_map}")
                lines.append(f"{mapping[fields[0]]} {mapping[fields[1]]} {fields[2]}\n")
    except (DataDirError, FileNotFoundError) as e:
        fail(str(e))
    atomic_write_text(args.out, "".join(lines))


if __name__ == "__main__":
    main()
