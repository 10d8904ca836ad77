"""Convert a trial list to Kaldi trials (`<utt1> <utt2> target|nontarget`).

    python -m upmp.bin.convert_trials --format auto|voxceleb|paper_csv|espnet|kaldi --input LIST --output trials \
        [--id_scheme auto|voxceleb|basename] [--data_dir data/test]

voxceleb: official `1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav`;
paper_csv: the UniPool paper's `LABEL,SAMPLE1,SAMPLE2,...` CSV; espnet: `trial_label`
(`utt1*utt2 0|1`; given trial.scp, the trial_label beside it); auto: sniffed from the
first line. With --data_dir the names are mapped to its utterance ids as imports map them
(upmp.data.trials.convert_trial_list: ids, ESPnet / WeSpeaker / VoxCeleb paths, file stems;
through its utt_map when it has one) and every one must be found. The output is rewritten
only when its content changes (its mtime tells stage 4 whether to score again).
"""
from __future__ import annotations

from pathlib import Path

from upmp.bin.common import make_parser, require_files, run_main, setup_logging
from upmp.data.kaldi_dir import read_table
from upmp.data.trials import (check_trial_list, convert_trial_list, espnet_label_file, read_trials, sniff_trials_format,
                              update_kaldi_trials)


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--format", required=True, choices=["auto", "kaldi", "voxceleb", "paper_csv", "espnet"])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--id_scheme", default="auto", choices=["auto", "voxceleb", "basename"])
    p.add_argument("--data_dir", default=None, help="map the names to the utterance ids of this data dir")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(input=args.input)
    if args.data_dir:
        d = Path(args.data_dir)
        require_files(data_dir=str(d / "utt2spk"))
        utt_map = read_table(d / "utt_map") if (d / "utt_map").is_file() else {}
        trials = convert_trial_list(args.input, read_table(d / "utt2spk"), utt_map, args.format, args.id_scheme)
    else:
        fmt = sniff_trials_format(args.input) if args.format == "auto" else args.format
        trials = read_trials(args.input, fmt, args.id_scheme)
        listed = espnet_label_file(args.input) if fmt == "espnet" else args.input  # trial.scp: its trial_label
        check_trial_list(trials, listed, 2 if fmt == "paper_csv" else 1)
    written = update_kaldi_trials(args.output, trials)
    n_tar = sum(t for *_, t in trials)
    print(f"{args.output}: {len(trials)} trials ({n_tar} target, {len(trials) - n_tar} nontarget)"
          + ("" if written else ", unchanged"))


if __name__ == "__main__":
    run_main(main)
