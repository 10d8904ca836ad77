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
    <root>/test/aac/...  or  <root>/test/wav/...     the 118 test speakers (vox2_test_aac.zip unzipped into
                                test/), read only for the authors' validation list (prepare_voxceleb2_test_valid)
m4a files become `ffmpeg ... |` pipes in wav.scp (16 kHz mono 16-bit). utt2dur is written for
wav trees only: an m4a duration needs one ffprobe run per file (about a million files).

Written: <out>/<set>/{wav.scp,utt2spk,spk2utt[,utt2dur]} and `trials` for test and validation
sets. Utterance ids are `<spk>-<video>-<nnnnn>`, so they start with the speaker id.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from upmp.data.audio import audio_headers, ffmpeg_entry
from upmp.data.kaldi_dir import DataDir, DataDirError, c_sort_key
from upmp.recipes.protocols import resolve_protocol
from upmp.data.trials import (Trial, check_trial_list, make_balanced_trials, read_paper_csv_trials, read_voxceleb_trials,
                              write_kaldi_trials)

logger = logging.getLogger(__name__)

VOX1_WAV_TREES = ("wav", "vox1_dev_wav/wav", "vox1_test_wav/wav", "dev/wav", "test/wav")
VOX1_EXTENDED_LISTS = {"voxceleb1_e": "list_test_all2.txt", "voxceleb1_h": "list_test_hard2.txt"}
Trials = List[Trial]


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
        return ffmpeg_entry(path, resample=True)
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


def find_vox2_tree(root: Path, audio: str = "auto", part: str = "dev") -> Tuple[Path, str]:
    """(tree, extension) of the VoxCeleb2 `part` (dev or test) audio: <part>/wav (converted) first,
    then <part>/aac."""
    choices = {"wav": (root / part / "wav", "wav"), "m4a": (root / part / "aac", "m4a")}
    if audio not in ("auto", *choices):
        raise DataDirError(f"unknown VoxCeleb2 audio format {audio!r} (auto, wav, m4a)")
    for kind in (("wav", "m4a") if audio == "auto" else (audio,)):
        tree, ext = choices[kind]
        if tree.is_dir():
            return tree, ext
    if part == "test":
        raise DataDirError(f"{root}: no VoxCeleb2 test audio (test/aac/<id>/<video>/<n>.m4a or test/wav/...); "
                           "the authors' protocol validates a VoxCeleb1 model on the 118 Vox2 test speakers: "
                           "unzip vox2_test_aac.zip into <root>/test and give --voxceleb2_root <root>")
    raise DataDirError(f"{root}: no VoxCeleb2 {part} tree ({part}/aac/<id>/<video>/<n>.m4a or {part}/wav/...)"
                       + ("" if audio == "auto" else f" for audio format {audio}"))


def check_vox2_meta(root: Path, tree: Path, utts: Dict[str, Path], part: str) -> None:
    """With <root>/vox2_meta.csv present, every speaker of `tree` must be listed in set `part`."""
    meta = root / "vox2_meta.csv"
    if not meta.is_file():
        return
    sets_meta = read_vox2_meta(meta)
    for spk in sorted({speaker_of(u) for u in utts}, key=c_sort_key):
        if spk not in sets_meta:
            raise DataDirError(f"{meta}: speaker {spk} of {tree} is not listed")
        if sets_meta[spk][0] != part:
            raise DataDirError(f"{meta}:{sets_meta[spk][1]}: speaker {spk} is in {tree} but listed as "
                               f"'{sets_meta[spk][0]}'")


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
    tree, ext = find_vox2_tree(root_p, audio)
    utts = scan_tree(tree, ext)
    logger.info("VoxCeleb2 dev tree %s: %d utterances", tree, len(utts))
    check_vox2_meta(root_p, tree, utts, "dev")
    sets, set_trials = {dev_name: utts}, {}
    if valid_speakers > 0:
        sets[dev_name], sets[valid_name] = hold_out_speakers(utts, valid_speakers, root_p)
        set_trials[valid_name] = validation_trials(list(sets[valid_name]), seed, valid_targets_per_speaker)
    return write_sets(out, sets, set_trials, wav_durations(utts))


# The authors' trials-vox2.csv: their --total_sample_size, "approximate sample size for total number of trial pairs"
AUTHORS_VALID_TRIALS = 64000


def authors_balanced_trials(utts: Sequence[str], seed: int, total: int = AUTHORS_VALID_TRIALS) -> Trials:
    """Balanced trials by the rules of the UniPool authors' script for trials-vox2.csv.

    With S speakers: ceil((total // 2) / S) target trials per speaker, and ceil((total // 2) /
    C(S, 2)) nontarget trials per speaker pair (64,000 over the 118 Vox2 test speakers: 272 x 118 =
    32,096 targets and 5 x 6,903 = 34,515 nontargets; equal counts when S = 3). Speakers are visited
    in turn (C order), pairs in combinations order, targets first. A target trial is, on a fair
    coin, two utterances of one video (among videos with two or more) or one utterance each of two
    different videos; a nontarget trial takes a random video of each speaker, then a random
    utterance of it. Unlike the authors' script no pair is drawn twice (a repeat is drawn again;
    when a speaker's pairs of one kind are used up the other kind is taken), and the generator is
    numpy's seeded with `seed` (theirs: Python's random, seed 42): the list follows their rules and
    sizes, not their lines.
    """
    tree: Dict[str, Dict[str, List[str]]] = {}
    for u in sorted(utts, key=c_sort_key):
        tree.setdefault(speaker_of(u), {}).setdefault(utt_session(u), []).append(u)
    speakers = sorted(tree, key=c_sort_key)
    if len(speakers) < 2:
        raise DataDirError(f"balanced trials need at least two speakers, got {len(speakers)}")
    spk_pairs = [(a, b) for i, a in enumerate(speakers) for b in speakers[i + 1:]]
    n_pos, n_neg = -(-(total // 2) // len(speakers)), -(-(total // 2) // len(spk_pairs))
    size = {s: sum(len(v) for v in tree[s].values()) for s in speakers}
    same_left = {s: sum(len(v) * (len(v) - 1) // 2 for v in tree[s].values()) for s in speakers}
    cross_left = {s: size[s] * (size[s] - 1) // 2 - same_left[s] for s in speakers}
    for s in speakers:
        if same_left[s] + cross_left[s] < n_pos:
            raise DataDirError(f"speaker {s} has {size[s]} utterances, too few for {n_pos} distinct target trials; "
                               f"ask for fewer than {total} validation trials")
    # then every speaker pair has enough distinct nontarget pairs: n_neg <= 2 * n_pos (C(S, 2) >= S / 2),
    # and size[a] * size[b] >= m * m > m * (m - 1) >= 2 * n_pos, with m the smaller of the two sizes
    rng = np.random.default_rng(seed)
    seen: Set[Tuple[str, str]] = set()
    videos = {s: [tree[s][v] for v in sorted(tree[s])] for s in speakers}  # utterance lists, by video
    multi = {s: [v for v in videos[s] if len(v) >= 2] for s in speakers}

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def two(seq):  # two different elements, each ordered pair equally likely
        i, j = int(rng.integers(len(seq))), int(rng.integers(len(seq) - 1))
        return seq[i], seq[j + (j >= i)]

    def draw(make, *args) -> Tuple[str, str]:
        while True:
            a, b = make(*args)
            if (a, b) not in seen and (b, a) not in seen:
                seen.add((a, b))
                return a, b

    def same_video(s):
        return two(pick(multi[s]))

    def cross_video(s):
        v, w = two(videos[s])
        return pick(v), pick(w)

    def any_utterances(a, b):
        return pick(pick(videos[a])), pick(pick(videos[b]))

    trials: Trials = []
    for _ in range(n_pos):
        for s in speakers:
            same = bool(rng.random() >= 0.5)
            if (same and not same_left[s]) or (not same and not cross_left[s]):
                same = not same
            if same:
                same_left[s] -= 1
            else:
                cross_left[s] -= 1
            trials.append(Trial(*draw(same_video if same else cross_video, s), True))
    for _ in range(n_neg):
        for a, b in spk_pairs:
            trials.append(Trial(*draw(any_utterances, a, b), False))
    return trials


def prepare_voxceleb2_test_valid(root: str, out_dir: str, valid_name: str = "voxceleb2_test_valid", seed: int = 0,
                                 total_trials: int = AUTHORS_VALID_TRIALS, audio: str = "auto",
                                 protocol_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                                 url_base: Optional[str] = None) -> Dict[str, Path]:
    """Write <out_dir>/<valid_name>: the authors' validation list for VoxCeleb1-trained models,
    trials over the VoxCeleb2 test speakers, from <root>/test/wav or <root>/test/aac; the data
    dir holds the utterances of the trials. The list is the authors' own trials-vox2.csv when
    resolve_protocol finds it (protocol_dir, else a download from url_base into cache_dir; every
    utterance must be in the tree), else regenerated by their rules (authors_balanced_trials:
    seed, total_trials). With vox2_meta.csv present, every speaker of the tree must be `test`."""
    root_p = Path(root)
    tree, ext = find_vox2_tree(root_p, audio, part="test")
    utts = scan_tree(tree, ext)
    logger.info("VoxCeleb2 test tree %s: %d utterances", tree, len(utts))
    check_vox2_meta(root_p, tree, utts, "test")
    protocol = resolve_protocol("voxceleb_vox2_trials", protocol_dir, cache_dir, url_base)
    if protocol is not None:
        trials = read_trial_list(protocol["trials_vox2"])
        check_trials(protocol["trials_vox2"], trials, utts, where=str(tree))
    else:
        trials = authors_balanced_trials(list(utts), seed, total_trials)
    used = {u for a, b, _ in trials for u in (a, b)}
    subset = {u: p for u, p in utts.items() if u in used}
    return write_sets(Path(out_dir), {valid_name: subset}, {valid_name: trials}, wav_durations(subset))
