"""Score Kaldi trials with embeddings from any Kaldi-compatible toolkit.

    python -m upmp.bin.score --method cosine --embeddings exp/x/embeddings/test/xvector.scp \
        --trials data/test/trials --out exp/x/scores/test.cosine [--train_embeddings train/xvector.scp]

Writes `<utt1> <utt2> <score>` lines in trial order. With --train_embeddings
their mean is subtracted before cosine scoring.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from upmp.bin.common import fail, setup_logging
from upmp.data.kaldi_dir import DataDirError, atomic_write_text
from upmp.data.trials import read_kaldi_trials
from upmp.scoring.cosine import cosine_scores

logger = logging.getLogger("score")


def load_embeddings(scp: str) -> dict:
    import kaldiio
    try:
        return {k: np.asarray(v, dtype=np.float64) for k, v in kaldiio.load_scp(scp).items()}
    except FileNotFoundError as e:
        raise DataDirError(f"{scp}: {e}") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="cosine", choices=["cosine"])
    p.add_argument("--embeddings", required=True, help="xvector.scp of the trial utterances")
    p.add_argument("--trials", required=True, help="Kaldi trials: <utt1> <utt2> target|nontarget")
    p.add_argument("--out", required=True)
    p.add_argument("--train_embeddings", default=None, help="subtract the mean of these first")
    args = p.parse_args(argv)
    setup_logging()
    try:
        trials = read_kaldi_trials(args.trials)
        emb = load_embeddings(args.embeddings)
        mean = None
        if args.train_embeddings:
            mean = np.mean(np.stack(list(load_embeddings(args.train_embeddings).values())), axis=0)
        scores = cosine_scores(emb, trials, mean=mean, source=args.embeddings)
    except DataDirError as e:
        fail(str(e))
    atomic_write_text(args.out, "".join(f"{a} {b} {s:.6f}\n" for (a, b, _), s in zip(trials, scores)))
    logger.info("scored %d trials (%s) -> %s", len(trials), args.method, args.out)


if __name__ == "__main__":
    main()
