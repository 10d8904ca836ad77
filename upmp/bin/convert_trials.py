"""Convert a trial list to Kaldi trials (`<utt1> <utt2> target|nontarget`).

    python -m upmp.bin.convert_trials --format auto|voxceleb|paper_csv|espnet|kaldi --input LIST --output trials \
        [--id_scheme auto|voxceleb|basename] [--data_dir data/test]

voxceleb: official `1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav`;
paper_csv: the UniPool paper's `LABEL,SAMPLE1,SAMPLE2,...` CSV; espnet: `trial_label`
(`utt1*utt2 0|1`; given trial.scp, the trial_label beside it); auto: sniffed from the
first line. With --data_dir every trial utterance must be in its utt2spk.
"""
from __future__ import annotations

import argparse

from upmp.bin.common import fail
from upmp.data.kaldi_dir import DataDirError, read_table
from upmp.data.trials import read_trials, write_kaldi_trials


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=["auto", "kaldi", "voxceleb", "paper_csv", "espnet"])
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--id_scheme", default="auto", choices=["auto", "voxceleb", "basename"])
    p.add_argument("--data_dir", default=None, help="check that every trial utterance is in this data dir")
    args = p.parse_args(argv)
    try:
        trials = read_trials(args.input, args.format, args.id_scheme)
        if args.data_dir:
            utts = read_table(f"{args.data_dir}/utt2spk")
            for lineno, (a, b, _) in enumerate(trials, 1):
                for u in (a, b):
                    if u not in utts:
                        raise DataDirError(f"{args.input}: trial {lineno}: utterance {u!r} is not in "
                                           f"{args.data_dir}/utt2spk")
    except (DataDirError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    write_kaldi_trials(args.output, trials)
    n_tar = sum(t for *_, t in trials)
    print(f"{args.output}: {len(trials)} trials ({n_tar} target, {len(trials) - n_tar} nontarget)")


if __name__ == "__main__":
    main()
