"""Enrol a speaker into a speaker database directory (for upmp-identify).

    upmp-enroll --model models/upmp_ge2e --db speakers --speaker alice alice_1.wav alice_2.wav
    upmp-enroll --model models/upmp_ge2e --db speakers --speaker bob data/bob/wav.scp [--replace]
    upmp-enroll --model models/upmp_ge2e --db speakers --remove bob

Inputs: audio files, folders (searched for audio), wav.scp files or Kaldi data dirs, as upmp-embed
takes them. The speaker's model is the mean of the files' length-normalised embeddings (the model's
training-set mean subtracted), normalised again, stored in <db>/<speaker>.<id>.npy and listed in
<db>/index.json with the model's identity; a database of another model is refused. Every file is
embedded before anything is written; audio that cannot be read, too short or silent is one error
line and the database stays as it was. Layout and scoring: upmp.inference.speakers.
"""
from __future__ import annotations

from upmp.bin.common import add_device_args, check_device, make_parser, run_main, set_num_threads, setup_logging
from upmp.errors import ConfigError


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("--db", required=True, help="speaker database directory (made on the first enrolment)")
    p.add_argument("--speaker", default=None, help="name to enrol the audio under")
    p.add_argument("audio", nargs="*", help="audio files, folders, wav.scp files or data dirs of the speaker")
    p.add_argument("--replace", action="store_true", help="replace a speaker already enrolled under --speaker")
    p.add_argument("--remove", default=None, metavar="SPEAKER", help="remove an enrolled speaker (no audio)")
    add_device_args(p)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.remove is not None:
        if args.speaker or args.audio:
            raise ConfigError("--remove takes no --speaker and no audio")
    elif not args.speaker or not args.audio:
        raise ConfigError("give --speaker NAME and the speaker's audio (files, folders, wav.scp), or --remove NAME")
    set_num_threads(args.num_threads)
    check_device(args.device)
    from upmp.inference import gather_audio, load_model
    sources = gather_audio(args.audio) if args.remove is None else {}  # unreadable paths: before the model loads
    db = load_model(args.model, args.device).speakers(args.db)
    if args.remove is not None:
        db.remove(args.remove)
        print(f"removed {args.remove}; {args.db} holds {len(db.names)} speakers")
        return
    n = db.enroll(args.speaker, list(sources.values()), replace=args.replace)
    print(f"enrolled {args.speaker} from {n} files; {args.db} holds {len(db.names)} speakers")


if __name__ == "__main__":
    run_main(main)
