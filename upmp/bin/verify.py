"""Verify speakers with a trained model: two files, or a whole trial list.

    upmp-verify --model models/upmp_ge2e a.wav b.wav [--json]
    upmp-verify --model models/upmp_ge2e --trials data/test/trials --wav_scp data/test/wav.scp --out scores

Two files: prints the score (cosine after subtracting the training-set mean), the calibrated
log-likelihood ratio and the decision at the validation EER threshold stored in the package
("-" when the package has no validation list). A trial list (`<utt1> <utt2> [label]` lines, Kaldi
form; labels are ignored) with --wav_scp (a wav.scp, a data dir, a folder or audio files: ids as
in upmp-embed) writes a Kaldi score file `<utt1> <utt2> <score>` and, when calibrated,
`<out>.llr`; each utterance is embedded once. Audio too short for one upstream frame or silent
gives no score or decision: one error line naming it, exit 1.
"""
from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from upmp.bin.common import add_device_args, make_parser, run_main, set_num_threads, setup_logging
from upmp.bin.common import check_device, require_writable
from upmp.errors import DataDirError, JobArgsError

logger = logging.getLogger("verify")


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("audio", nargs="*", help="two audio files (enrolment, test)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trials", default=None, help="trial list: score every line")
    p.add_argument("--wav_scp", nargs="+", default=None, help="the trials' audio: wav.scp, data dir, folder or files")
    p.add_argument("--out", default=None, help="score file to write (with --trials)")
    add_device_args(p)
    return p


def read_pairs(path: str):
    pairs = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataDirError(f"{path}: cannot read the trial list: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) not in (2, 3):
                raise DataDirError(f"{path}:{lineno}: expected '<utt1> <utt2> [target|nontarget]', got {line.rstrip()!r}")
            pairs.append((fields[0], fields[1]))
    return pairs


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    check_device(args.device)
    from upmp.inference import gather_audio, load_model
    if args.trials:
        if args.audio or not args.wav_scp or not args.out:
            raise JobArgsError("--trials needs --wav_scp and --out, and no audio files")
        require_writable(args.out, directory=False)  # now, not after embedding every utterance
        pairs = read_pairs(args.trials)
        if not pairs:
            raise DataDirError(f"{args.trials}: no trials (the file is empty); give '<utt1> <utt2>' lines")
        sources = gather_audio(args.wav_scp)
        for i, (a, b) in enumerate(pairs):
            for u in (a, b):
                if u not in sources:
                    raise DataDirError(f"{args.trials}:{i + 1}: utterance {u!r} is not in {' '.join(args.wav_scp)}")
        model = load_model(args.model, args.device)
        utts = sorted({u for pair in pairs for u in pair})
        from tqdm import tqdm
        emb = {}
        for start in tqdm(range(0, len(utts), 64), desc="embed", unit="chunk", mininterval=5):
            keys = utts[start:start + 64]
            emb.update(zip(keys, model.embed_raw([sources[k] for k in keys], strict=True)))  # scores: no silence
        scores = model.score_embeddings(np.stack([emb[a] for a, _ in pairs]), np.stack([emb[b] for _, b in pairs]))
        from upmp.fileio import atomic_write_text
        atomic_write_text(args.out, "".join(f"{a} {b} {s:.6f}\n" for (a, b), s in zip(pairs, scores)))
        llr = model.llr(scores)
        if llr is not None:
            atomic_write_text(args.out + ".llr", "".join(f"{a} {b} {s:.6f}\n" for (a, b), s in zip(pairs, llr)))
        logger.info("%d trials scored -> %s%s", len(pairs), args.out, " (+ .llr)" if llr is not None else "")
        return
    if len(args.audio) != 2 or args.wav_scp or args.out:
        raise JobArgsError("give two audio files, or --trials LIST --wav_scp SCP --out FILE")
    model = load_model(args.model, args.device)
    r = model.verify(*args.audio)
    if args.json:
        print(json.dumps(dict(r, enroll=args.audio[0], test=args.audio[1])))
        return
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    decision = "-" if r["decision"] is None else ("target (same speaker)" if r["decision"] else "nontarget")
    print(f"score {r['score']:.4f}  llr {fmt(r['llr'])}  decision {decision}  (threshold {fmt(r['threshold'])})")



if __name__ == "__main__":
    run_main(main)
