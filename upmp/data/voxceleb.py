"""VoxCeleb1 data preparation: the official on-disk tree -> Kaldi data dirs + trials.

Layout read (as distributed, dev and test wav trees merged under `wav/`):
    <root>/wav/<idNNNNN>/<video-id>/<nnnnn>.wav
    <root>/vox1_meta.csv     tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set
    <root>/veri_test2.txt    trial list `1 idA/video/00001.wav idB/video/00002.wav`
Utterance ids are `<spk>-<video>-<nnnnn>`, so they start with the speaker id.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Dict, Set

import soundfile

from upmp.data.kaldi_dir import DataDir, DataDirError
from upmp.data.trials import make_balanced_trials, read_voxceleb_trials, write_kaldi_trials

logger = logging.getLogger(__name__)


def read_vox1_meta(path: Path) -> Dict[str, str]:
    """vox1_meta.csv -> {speaker id: 'dev' | 'test'}."""
    sets: Dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or not rows[0] or not rows[0][0].startswith("VoxCeleb1 ID"):
        raise DataDirError(f"{path}:1: expected a tab-separated header starting with 'VoxCeleb1 ID'")
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) < 5 or row[-1].strip() not in ("dev", "test"):
            raise DataDirError(f"{path}:{lineno}: expected 5 tab-separated fields ending in dev|test, got {row}")
        sets[row[0].strip()] = row[-1].strip()
    return sets


def scan_wav_tree(wav_root: Path) -> Dict[str, Path]:
    """{utt id: absolute wav path} for every <spk>/<video>/<n>.wav below wav_root."""
    utts: Dict[str, Path] = {}
    for path in sorted(wav_root.glob("*/*/*.wav")):
        spk, video, stem = path.parent.parent.name, path.parent.name, path.stem
        utts[f"{spk}-{video}-{stem}"] = path.resolve()
    if not utts:
        raise DataDirError(f"{wav_root}: no <speaker>/<video>/<n>.wav files found")
    return utts


def make_data_dir(utts: Dict[str, Path], with_durations: bool = True) -> DataDir:
    wav_scp = {u: str(p) for u, p in utts.items()}
    utt2spk = {u: u.split("-", 1)[0] for u in utts}
    utt2dur = None
    if with_durations:
        utt2dur = {}
        for u, p in utts.items():
            info = soundfile.info(str(p))
            utt2dur[u] = info.frames / info.samplerate
    return DataDir(wav_scp, utt2spk, utt2dur=utt2dur)


def utt_session(utt: str) -> str:
    """`id10270-x6uYqmx31kE-00001` -> `x6uYqmx31kE` (video ids may contain '-')."""
    return utt.split("-", 1)[1].rsplit("-", 1)[0]


def prepare_voxceleb1(root: str, out_dir: str, trials_file: str = "veri_test2.txt",
                      dev_name: str = "voxceleb1_dev", test_name: str = "voxceleb1_test",
                      valid_speakers: int = 0, valid_name: str = "voxceleb1_valid", seed: int = 0,
                      ) -> Dict[str, Path]:
    """Write <out_dir>/<dev_name> and <out_dir>/<test_name> (with `trials`).

    Test speakers come from vox1_meta.csv's Set column when the file exists,
    otherwise from the speakers of the trial list. Every trial utterance must
    exist in the wav tree. With valid_speakers > 0, that many development
    speakers (the last in sorted order) are held out as <valid_name> with
    balanced cross-session trials: a validation / calibration list that is
    neither the test list nor trained on.
    """
    root_p, out = Path(root), Path(out_dir)
    trials_path = root_p / trials_file
    if not trials_path.is_file():
        raise DataDirError(f"{trials_path}: trial list not found")
    trials = read_voxceleb_trials(str(trials_path))
    utts = scan_wav_tree(root_p / "wav")
    meta = root_p / "vox1_meta.csv"
    test_spk: Set[str]
    if meta.is_file():
        sets = read_vox1_meta(meta)
        test_spk = {s for s, v in sets.items() if v == "test"}
    else:
        test_spk = {u.split("-", 1)[0] for a, b, _ in trials for u in (a, b)}
    for lineno, (a, b, _) in enumerate(trials, 1):
        for u in (a, b):
            if u not in utts:
                raise DataDirError(f"{trials_path}:{lineno}: utterance {u!r} not found under {root_p / 'wav'}")
            if u.split("-", 1)[0] not in test_spk:
                raise DataDirError(f"{trials_path}:{lineno}: speaker of {u!r} is not a test speaker")
    dev = {u: p for u, p in utts.items() if u.split("-", 1)[0] not in test_spk}
    test = {u: p for u, p in utts.items() if u.split("-", 1)[0] in test_spk}
    if not dev:
        raise DataDirError(f"{root_p}: no development (training) speakers found")
    sets = [(dev_name, dev), (test_name, test)]
    if valid_speakers > 0:
        dev_spk = sorted({u.split("-", 1)[0] for u in dev})
        if valid_speakers >= len(dev_spk) - 1:
            raise DataDirError(f"{root_p}: cannot hold out {valid_speakers} of {len(dev_spk)} development speakers")
        held = set(dev_spk[-valid_speakers:])
        valid = {u: p for u, p in dev.items() if u.split("-", 1)[0] in held}
        dev = {u: p for u, p in dev.items() if u.split("-", 1)[0] not in held}
        sets = [(dev_name, dev), (valid_name, valid), (test_name, test)]
    outputs = {}
    for name, subset in sets:
        make_data_dir(subset).write(out / name)
        outputs[name] = out / name
    write_kaldi_trials(str(out / test_name / "trials"), trials)
    if valid_speakers > 0:
        valid_trials = make_balanced_trials({u: u.split("-", 1)[0] for u in valid}, seed,
                                            utt2session={u: utt_session(u) for u in valid})
        write_kaldi_trials(str(out / valid_name / "trials"), valid_trials)
    logger.info("VoxCeleb1: %d dev utterances (%d speakers), %d test utterances (%d speakers), %d trials",
                len(dev), len({u.split('-', 1)[0] for u in dev}), len(test), len(test_spk), len(trials))
    return outputs


