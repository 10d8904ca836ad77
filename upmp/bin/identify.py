"""Identify the speaker of audio files among the speakers enrolled in a database (upmp-enroll).

    upmp-identify --model models/upmp_ge2e --db speakers who.wav [more.wav ...] [--top_k 3] [--json]

Per file: the best enrolled speaker, the score (cosine with the speaker's mean embedding), the
calibrated log-likelihood ratio and the decision at the package's threshold (the validation list's
EER threshold), or "unknown speaker" when the best score is below it; --top_k N lists the N best.
Inputs as upmp-embed takes them (files, folders, wav.scp files, data dirs). --json: one JSON object
per input line. A database of another model, an empty one, or audio too short or silent is one
error line. Scoring: upmp.inference.speakers.
"""
from __future__ import annotations

import json

from upmp.bin.common import add_device_args, check_device, make_parser, run_main, set_num_threads, setup_logging
from upmp.errors import ConfigError


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("--db", required=True, help="speaker database directory (upmp-enroll)")
    p.add_argument("audio", nargs="+", help="audio files, folders, wav.scp files or data dirs to identify")
    p.add_argument("--top_k", type=int, default=1, help="also list the k best speakers")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    add_device_args(p)
    return p


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.top_k < 1:
        raise ConfigError(f"--top_k {args.top_k}: give 1 or more")
    set_num_threads(args.num_threads)
    check_device(args.device)
    from upmp.inference import gather_audio, load_model
    sources = gather_audio(args.audio)
    db = load_model(args.model, args.device).speakers(args.db)
    results = db.identify(list(sources.values()), top_k=args.top_k)
    for (utt, source), r in zip(sources.items(), results):
        if args.json:
            print(json.dumps(dict(r, input=source.where or utt)))
            continue
        about = f"score {r['score']:.4f}  llr {_num(r['llr'])}  (threshold {_num(r['threshold'])})"
        if r["speaker"] is None:
            print(f"{utt}: unknown speaker (best {r['best']}: {about})")
        else:
            decided = "" if r["decision"] is None else "  accepted"
            print(f"{utt}: {r['speaker']}  {about}{decided}")
        for rank, t in enumerate(r["top"][1:], 2):
            print(f"  {rank}. {t['speaker']}  score {t['score']:.4f}  llr {_num(t['llr'])}")


if __name__ == "__main__":
    run_main(main)
