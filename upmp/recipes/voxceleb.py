"""VoxCeleb1 / VoxCeleb2 data preparation: the official on-disk trees -> Kaldi data dirs + trials.

VoxCeleb1, read (the archives vox1_dev_wav.zip and vox1_test_wav.zip both unpack to `wav/`;
any of these trees, merged or side by side, are scanned):
    <root>/{wav, vox1_dev_wav/wav, vox1_test_wav/wav, dev/wav, test/wav}/<idNNNNN>/<video>/<nnnnn>.wav
    <root>/vox1_meta.csv        tab-separated: VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set
    <root>/veri_test2.txt       Vox1-O (cleaned), `1 idA/video/00001.wav idB/video/00002.wav`
    <root>/list_test_all2.txt   Vox1-E (cleaned), optional
    <root>/list_test_hard2.txt  Vox1-H (cleaned), optional
The trial list may also be the paper's CSV (`LABEL,SAMPLE1,SAMPLE2`, e.g. trials-vox1.csv).
Vox1-E and Vox1-H pair utterances of all 1,251 VoxCeleb1 speakers, development speakers
included: they test models trained without VoxCeleb1 (on VoxCeleb2 dev), so they are written
only in test-only mode (`test_only=True`) and refused when voxceleb1_dev is written for training.

VoxCeleb2, read (vox2_dev_aac.zip unpacks to `dev/aac/`; `dev/wav/` is the same tree converted):
    <root>/dev/aac/<idNNNNN>/<video>/<nnnnn>.m4a    or    <root>/dev/wav/<idNNNNN>/<video>/<nnnnn>.wav
    <root>/vox2_meta.csv        optional, comma- or tab-separated: VoxCeleb2 ID, VGGFace2 ID, Gender, Set
m4a files become `ffmpeg ... |` pipes in wav.scp (16 kHz mono 16-bit). utt2dur is written for
wav trees only: an m4a duration needs one ffprobe run per file (about a million files).

Written: <out>/<set>/{wav.scp,utt2spk,spk2utt[,utt2dur]} and `trials` for test and validation
sets. Utterance ids are `<spk>-<video>-<nnnnn>`, so they start with the speaker id.
"""
from __future__ import annotations

import csv
import logging
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from upmp.data.audio import SAMPLE_RATE, audio_headers
from upmp.data.kaldi_dir import DataDir, DataDirError, c_sort_key
from upmp.data.trials import (check_trial_list, make_balanced_trials, read_paper_csv_trials, read_voxceleb_trials,
                              write_kaldi_trials)

logger = logging.getLogger(__name__)

VOX1_WAV_TREES = ("wav", "vox1_dev_wav/wav", "vox1_test_wav/wav", "dev/wav", "test/wav")
VOX1_EXTENDED_LISTS = {"voxceleb1_e": "list_test_all2.txt", "voxceleb1_h": "list_test_hard2.txt"}
Trials = List[Tuple[str, str, bool]]


def speaker_of(utt: str) -> str:
    return utt.split("-", 1)[0]


def utt_session(utt: str) -> str:
    """`id10270-x6uYqmx31kE-00001` -> `x6uYqmx31kE` (video ids may contain '-')."""
    return utt.split("-", 1)[1].rsplit("-", 1)[0]


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


def read_vox2_meta(path: Path) -> Dict[str, Tuple[str, int]]:
    """vox2_meta.csv -> {speaker id: ('dev' | 'test', line number)}.

    The official file is comma-separated with padded fields (`id00012 ,n000012 ,m ,dev `);
    a tab-separated variant with more columns exists too: columns are found by header name.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise DataDirError(f"{path}:1: empty file")
    delimiter = "\t" if "\t" in lines[0] else ","
    header = [h.strip() for h in next(csv.reader([lines[0]], delimiter=delimiter))]
    if "VoxCeleb2 ID" not in header or "Set" not in header:
        raise DataDirError(f"{path}:1: expected a header with 'VoxCeleb2 ID' and 'Set' columns, got {header}")
    id_col, set_col = header.index("VoxCeleb2 ID"), header.index("Set")
    sets: Dict[str, Tuple[str, int]] = {}
    for lineno, row in enumerate(csv.reader(lines[1:], delimiter=delimiter), 2):
        if not row:
            continue
        row = [v.strip() for v in row]
        if len(row) <= max(id_col, set_col) or row[set_col] not in ("dev", "test"):
            raise DataDirError(f"{path}:{lineno}: expected '{', '.join(header)}' with Set dev|test, got {row}")
        sets[row[id_col]] = (row[set_col], lineno)
    return sets


def scan_tree(tree: Path, ext: str) -> Dict[str, Path]:
    """{utt id: absolute path} for every <spk>/<video>/<n>.<ext> below `tree`."""
    utts: Dict[str, Path] = {}
    for path in sorted(tree.glob(f"*/*/*.{ext}")):
        utts[f"{path.parent.parent.name}-{path.parent.name}-{path.stem}"] = path.resolve()
    if not utts:
        raise DataDirError(f"{tree}: no <speaker>/<video>/<n>.{ext} files found")
    return utts


def scan_vox1_trees(root: Path) -> Dict[str, Path]:
    """Every utterance of the VoxCeleb1 wav trees present under root (VOX1_WAV_TREES)."""
    trees = [root / t for t in VOX1_WAV_TREES if (root / t).is_dir()]
    if not trees:
        raise DataDirError(f"{root}: no VoxCeleb1 wav tree found (looked for {', '.join(VOX1_WAV_TREES)})")
    utts: Dict[str, Path] = {}
    for tree in trees:
        for utt, path in scan_tree(tree, "wav").items():
            if utt in utts:
                raise DataDirError(f"{path}: utterance {utt} is also in {utts[utt]}")
            utts[utt] = path
    logger.info("VoxCeleb1 trees %s: %d utterances", ", ".join(str(t) for t in trees), len(utts))
    return utts


def wav_scp_entry(path: Path) -> str:
    """A wav.scp value: the wav path itself, or an ffmpeg pipe decoding m4a to 16 kHz mono wav."""
    if path.suffix == ".m4a":
        return f"ffmpeg -nostdin -v 8 -i {shlex.quote(str(path))} -f wav -ar {SAMPLE_RATE} -ac 1 -acodec pcm_s16le - |"
    if any(c.isspace() for c in str(path)):
        raise DataDirError(f"{path}: white space in a path cannot be written to wav.scp")
    return str(path)


def wav_durations(utts: Dict[str, Path]) -> Optional[Dict[str, float]]:
    """Seconds per utterance from the wav headers; None unless every file is a wav."""
    if any(p.suffix != ".wav" for p in utts.values()):
        return None
    return {utt: seconds for utt, (_, seconds) in audio_headers(utts, "utt2dur").items()}


def make_data_dir(utts: Dict[str, Path], durations: Optional[Dict[str, float]] = None) -> DataDir:
    return DataDir({u: wav_scp_entry(p) for u, p in utts.items()}, {u: speaker_of(u) for u in utts},
                   utt2dur=None if durations is None else {u: durations[u] for u in utts})


def first_trial_line(path: Path) -> int:
    """Line number of the first trial in a list read by read_trial_list (a CSV has a header)."""
    return 2 if path.suffix == ".csv" else 1


def read_trial_list(path: Path) -> Trials:
    """An official VoxCeleb list, or the paper's CSV (`.csv`) with VoxCeleb paths."""
    if not path.is_file():
        raise DataDirError(f"{path}: trial list not found")
    if path.suffix == ".csv":
        return read_paper_csv_trials(str(path), scheme="voxceleb")
    return read_voxceleb_trials(str(path))


def check_trials(path: Path, trials: Trials, utts: Dict[str, Path], speakers: Optional[Set[str]] = None,
                 where: str = "the audio trees") -> None:
    """Every trial utterance exists (and belongs to `speakers` when given), no pair is labelled both
    ways; errors name the line. Repeated lines and pairs in both orders are reported (check_trial_list)."""
    for lineno, (a, b, _) in enumerate(trials, first_trial_line(path)):
        for u in (a, b):
            if u not in utts:
                raise DataDirError(f"{path}:{lineno}: utterance {u!r} not found under {where}")
            if speakers is not None and speaker_of(u) not in speakers:
                raise DataDirError(f"{path}:{lineno}: speaker of {u!r} is not a test speaker")
    check_trial_list(trials, str(path), first_trial_line(path))


def hold_out_speakers(utts: Dict[str, Path], num_speakers: int, where: Path,
                      ) -> Tuple[Dict[str, Path], Dict[str, Path]]:
    """Split off the last `num_speakers` speakers (C-sorted): (training utts, held-out utts)."""
    speakers = sorted({speaker_of(u) for u in utts}, key=c_sort_key)
    if num_speakers >= len(speakers) - 1:
        raise DataDirError(f"{where}: cannot hold out {num_speakers} of {len(speakers)} development speakers")
    held = set(speakers[-num_speakers:])
    return ({u: p for u, p in utts.items() if speaker_of(u) not in held},
            {u: p for u, p in utts.items() if speaker_of(u) in held})


def validation_trials(utts: Sequence[str], seed: int, max_targets_per_speaker: Optional[int] = None) -> Trials:
    """Balanced cross-session trials (targets from different videos) over held-out speakers."""
    return make_balanced_trials({u: speaker_of(u) for u in utts}, seed,
                                utt2session={u: utt_session(u) for u in utts},
                                max_targets_per_speaker=max_targets_per_speaker)


def write_sets(out: Path, sets: Dict[str, Dict[str, Path]], trials: Dict[str, Trials],
               durations: Optional[Dict[str, float]]) -> Dict[str, Path]:
    """Write each data dir (and its trials when it has some); returns {name: directory}."""
    outputs = {}
    for name, subset in sets.items():
        make_data_dir(subset, durations).write(out / name)
        if name in trials:
            write_kaldi_trials(str(out / name / "trials"), trials[name])
        outputs[name] = out / name
        logger.info("%s: %d utterances, %d speakers%s", out / name, len(subset),
                    len({speaker_of(u) for u in subset}),
                    f", {len(trials[name])} trials" if name in trials else "")
    return outputs


def prepare_voxceleb1(root: str, out_dir: str, trials_file: str = "veri_test2.txt",
                      dev_name: str = "voxceleb1_dev", test_name: str = "voxceleb1_test",
                      valid_speakers: int = 0, valid_name: str = "voxceleb1_valid", seed: int = 0,
                      valid_targets_per_speaker: Optional[int] = None, test_only: bool = False,
                      extended: bool = False) -> Dict[str, Path]:
    """Write <out_dir>/<dev_name> and <out_dir>/<test_name> (with `trials`).

    Test speakers come from vox1_meta.csv's Set column when the file exists,
    otherwise from the speakers of the trial list (a path relative to root, or
    absolute; `.csv` is the paper's format). Every trial utterance must exist.
    With valid_speakers > 0, that many development speakers (the last in sorted
    order) are held out as <valid_name> with balanced cross-session trials: a
    validation / calibration list that is neither the test list nor trained on.
    test_only writes the test set(s) alone (for models trained on VoxCeleb2);
    extended (test_only only) adds voxceleb1_e / voxceleb1_h for the Vox1-E / H
    lists present under root, each holding the utterances of its list.
    """
    root_p, out = Path(root), Path(out_dir)
    if extended and not test_only:
        raise DataDirError(f"{root_p}: Vox1-E/H ({', '.join(VOX1_EXTENDED_LISTS.values())}) pair VoxCeleb1 "
                           f"development speakers, so they cannot test a model trained on {dev_name}; "
                           "they are test lists for VoxCeleb2-trained models (test_only)")
    if test_only and valid_speakers > 0:
        raise DataDirError(f"{root_p}: a validation split of development speakers needs the development set "
                           "(not test_only)")
    trials_path = root_p / trials_file
    trials = read_trial_list(trials_path)
    utts = scan_vox1_trees(root_p)
    meta = root_p / "vox1_meta.csv"
    if meta.is_file():
        test_spk = {s for s, v in read_vox1_meta(meta).items() if v == "test"}
    else:
        test_spk = {speaker_of(u) for a, b, _ in trials for u in (a, b)}
    check_trials(trials_path, trials, utts, test_spk)
    sets = {test_name: {u: p for u, p in utts.items() if speaker_of(u) in test_spk}}
    set_trials = {test_name: trials}
    if not test_only:
        dev = {u: p for u, p in utts.items() if speaker_of(u) not in test_spk}
        if not dev:
            raise DataDirError(f"{root_p}: no development (training) speakers found")
        sets[dev_name] = dev
        if valid_speakers > 0:
            sets[dev_name], sets[valid_name] = hold_out_speakers(dev, valid_speakers, root_p)
            set_trials[valid_name] = validation_trials(list(sets[valid_name]), seed, valid_targets_per_speaker)
    if extended:
        for name, list_name in VOX1_EXTENDED_LISTS.items():
            if not (root_p / list_name).is_file():
                logger.info("%s not found: no %s", root_p / list_name, name)
                continue
            set_trials[name] = read_trial_list(root_p / list_name)
            check_trials(root_p / list_name, set_trials[name], utts)
            used = {u for a, b, _ in set_trials[name] for u in (a, b)}
            sets[name] = {u: p for u, p in utts.items() if u in used}
    needed = {u: p for subset in sets.values() for u, p in subset.items()}
    return write_sets(out, sets, set_trials, wav_durations(needed))


def find_vox2_dev_tree(root: Path, audio: str = "auto") -> Tuple[Path, str]:
    """(tree, extension) of the VoxCeleb2 dev audio: dev/wav (converted) first, then dev/aac."""
    choices = {"wav": (root / "dev" / "wav", "wav"), "m4a": (root / "dev" / "aac", "m4a")}
    if audio not in ("auto", *choices):
        raise DataDirError(f"unknown VoxCeleb2 audio format {audio!r} (auto, wav, m4a)")
    for kind in (("wav", "m4a") if audio == "auto" else (audio,)):
        tree, ext = choices[kind]
        if tree.is_dir():
            return tree, ext
    raise DataDirError(f"{root}: no VoxCeleb2 dev tree (dev/aac/<id>/<video>/<n>.m4a or dev/wav/...)"
                       + ("" if audio == "auto" else f" for audio format {audio}"))


def prepare_voxceleb2(root: str, out_dir: str, dev_name: str = "voxceleb2_dev", valid_speakers: int = 0,
                      valid_name: str = "voxceleb2_valid", seed: int = 0,
                      valid_targets_per_speaker: Optional[int] = None, audio: str = "auto",
                      ) -> Dict[str, Path]:
    """Write <out_dir>/<dev_name> from the VoxCeleb2 dev tree (the training set).

    With vox2_meta.csv present, every speaker of the tree must be listed as `dev`.
    valid_speakers > 0 holds out that many dev speakers (the last in sorted order)
    as <valid_name> with balanced cross-session trials. VoxCeleb2 models are tested
    on VoxCeleb1 (prepare_voxceleb1 with test_only / extended).
    """
    root_p, out = Path(root), Path(out_dir)
    tree, ext = find_vox2_dev_tree(root_p, audio)
    utts = scan_tree(tree, ext)
    logger.info("VoxCeleb2 dev tree %s: %d utterances", tree, len(utts))
    meta = root_p / "vox2_meta.csv"
    if meta.is_file():
        sets_meta = read_vox2_meta(meta)
        for spk in sorted({speaker_of(u) for u in utts}, key=c_sort_key):
            if spk not in sets_meta:
                raise DataDirError(f"{meta}: speaker {spk} of {tree} is not listed")
            if sets_meta[spk][0] != "dev":
                raise DataDirError(f"{meta}:{sets_meta[spk][1]}: speaker {spk} is in {tree} but listed as "
                                   f"'{sets_meta[spk][0]}'")
    sets, set_trials = {dev_name: utts}, {}
    if valid_speakers > 0:
        sets[dev_name], sets[valid_name] = hold_out_speakers(utts, valid_speakers, root_p)
        set_trials[valid_name] = validation_trials(list(sets[valid_name]), seed, valid_targets_per_speaker)
    return write_sets(out, sets, set_trials, wav_durations(utts))
