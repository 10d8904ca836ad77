"""Trial lists: Kaldi `<utt1> <utt2> target|nontarget` (WeSpeaker's `.kaldi` lists too),
VoxCeleb `<1|0> <a.wav> <b.wav>`, ESPnet `trial_label` (`<utt1>*<utt2> <0|1>`, with
`trial.scp` / `trial2.scp` holding `<utt1>*<utt2> <audio>`) and the paper's CSV lists.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Collection, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from upmp.data.kaldi_dir import DataDirError
from upmp.fileio import atomic_write_text

KALDI_LABELS = {"target": True, "nontarget": False}


class Trial(NamedTuple):
    """One trial of a list: the enrolment and test utterance ids (or audio paths, as a list names
    them) and whether they are of the same speaker (None: unlabelled). A tuple: `a, b, t = trial`."""
    enrol: str
    test: str
    target: Optional[bool]

logger = logging.getLogger(__name__)


def check_trial_list(trials: List[Trial], path: str, first_line: int = 1,
                     report: bool = True) -> Tuple[int, int]:
    """Repeats in a trial list (trial i is on line first_line + i): a pair labelled target on one line
    and nontarget on another (in either order) is a DataDirError naming both lines. Repeated lines and
    pairs listed in both orders are kept (scored as listed: a repeated trial counts as often as it is
    listed, in the scores and every metric); with report, one warning line gives their counts and the
    first of each. Returns (repeated lines, pairs in both orders)."""
    first: Dict[Tuple[str, str], int] = {}
    repeats: List[Tuple[int, int]] = []
    reversed_pairs: List[Tuple[int, int]] = []
    for i, (a, b, is_target) in enumerate(trials):
        for key, order in (((a, b), ""), ((b, a), " (the same pair in the other order)")):
            j = first.get(key)
            if j is not None and trials[j][2] != is_target:
                raise DataDirError(
                    f"{path}:{first_line + i}: trial '{a} {b}' is labelled {_label(is_target)} here and "
                    f"{_label(trials[j][2])} on line {first_line + j}{order}; fix one of the two lines")
        if (a, b) in first:
            repeats.append((first[(a, b)], i))
            continue
        first[(a, b)] = i
        if a != b and (b, a) in first:
            reversed_pairs.append((first[(b, a)], i))
    if report and (repeats or reversed_pairs):
        found = []
        if repeats:
            j, i = repeats[0]
            found.append(f"{len(repeats)} repeated line(s) (first: line {first_line + i} repeats line "
                         f"{first_line + j}, '{trials[i][0]} {trials[i][1]}')")
        if reversed_pairs:
            j, i = reversed_pairs[0]
            found.append(f"{len(reversed_pairs)} pair(s) listed in both orders (first: lines {first_line + j} "
                         f"and {first_line + i}, '{trials[j][0]} {trials[j][1]}')")
        logger.warning("%s: %s; scored as listed: a repeated trial counts as often as it is listed, in every "
                       "metric (remove the lines to count it once)", path, " and ".join(found))
    return len(repeats), len(reversed_pairs)


def _label(is_target: bool) -> str:
    return "target" if is_target else "nontarget"


def text_lines(path: str):
    """(line number, line) of a text file; bytes that are not UTF-8 (a binary file given as a
    list) are a DataDirError naming the line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataDirError(f"{path}:{lineno}: not UTF-8 text (a binary file?); give a trial list "
                                   f"(Kaldi, VoxCeleb, ESPnet or the paper's CSV)") from None


def voxceleb_path_to_utt(path: str) -> str:
    """`id10270/x6uYqmx31kE/00001.wav` -> `id10270-x6uYqmx31kE-00001` (Kaldi/WeSpeaker-style id)."""
    parts = path.strip().split("/")
    if len(parts) < 3:
        raise ValueError(f"expected <speaker>/<video>/<file>, got {path!r}")
    spk, video, name = parts[-3:]
    stem = name.rsplit(".", 1)[0]
    return f"{spk}-{video}-{stem}"


def read_voxceleb_trials(path: str, keep_paths: bool = False) -> List[Trial]:
    """Read an official VoxCeleb list (`1 a.wav b.wav`), returning Kaldi-style utterance
    ids (`id10270-x6uYqmx31kE-00001`), or the paths as written with keep_paths=True."""
    trials = []
    for lineno, line in text_lines(path):
        fields = line.split()
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise DataDirError(f"{path}:{lineno}: expected '<1|0> <enroll.wav> <test.wav>', got {line.rstrip()!r}")
        if keep_paths:
            trials.append(Trial(fields[1], fields[2], fields[0] == "1"))
            continue
        try:
            a, b = voxceleb_path_to_utt(fields[1]), voxceleb_path_to_utt(fields[2])
        except ValueError as e:
            raise DataDirError(f"{path}:{lineno}: {e}") from None
        trials.append(Trial(a, b, fields[0] == "1"))
    return trials


def path_to_utt(path: str, scheme: str = "auto") -> str:
    """Utterance id of an audio path in a trial list.

    voxceleb: `.../id10270/x6uYqmx31kE/00001.wav` -> `id10270-x6uYqmx31kE-00001`
    basename: `p329/p329_050.wav` -> `p329_050`, `test-clean/6829/6829-68771-0026.wav` -> `6829-68771-0026`
    auto: voxceleb when the file name is only digits (VoxCeleb's numbering), else basename.
    """
    stem = path.strip().rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if scheme == "auto":
        scheme = "voxceleb" if stem.isdigit() else "basename"
    if scheme == "voxceleb":
        return voxceleb_path_to_utt(path)
    if scheme == "basename":
        if not stem:
            raise ValueError(f"no file name in {path!r}")
        return stem
    raise ValueError(f"unknown id scheme {scheme!r} (auto, voxceleb, basename)")


def read_paper_csv_trials(path: str, scheme: str = "auto") -> List[Trial]:
    """The UniPool paper's CSV lists: header LABEL,SAMPLE1,SAMPLE2[,...], one trial per row."""
    import csv
    trials = []
    reader = csv.reader(line for _, line in text_lines(path))
    header = next(reader, None)
    if not header or header[:3] != ["LABEL", "SAMPLE1", "SAMPLE2"]:
        raise DataDirError(f"{path}:1: expected a header starting with LABEL,SAMPLE1,SAMPLE2, got {header}")
    for lineno, row in enumerate(reader, 2):
        if len(row) < 3 or row[0] not in ("0", "1"):
            raise DataDirError(f"{path}:{lineno}: expected '<0|1>,<sample1>,<sample2>,...', got {row[:3]}")
        try:
            trials.append(Trial(path_to_utt(row[1], scheme), path_to_utt(row[2], scheme), row[0] == "1"))
        except ValueError as e:
            raise DataDirError(f"{path}:{lineno}: {e}") from None
    return trials


def espnet_label_file(path: str) -> str:
    """`path` if it is an ESPnet trial_label; for ESPnet's trial.scp / trial2.scp
    (`<utt1>*<utt2> <audio of utt1 | utt2>`, no labels), the trial_label beside it."""
    first = next((line for _, line in text_lines(path)), "").split()
    if len(first) == 2 and "*" in first[0] and first[1] not in ("0", "1"):
        label = Path(path).with_name("trial_label")
        if not label.is_file():
            raise DataDirError(f"{path}:1: this looks like ESPnet's trial.scp (<utt1>*<utt2> <audio>), which has "
                               f"no labels; they are in trial_label, not found beside it")
        return str(label)
    return path


def read_espnet_trials(path: str) -> List[Trial]:
    """ESPnet's trial_label: `<utt1>*<utt2> <0|1>` (given trial.scp, the trial_label beside it)."""
    path = espnet_label_file(path)
    trials = []
    for lineno, line in text_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1") or fields[0].count("*") != 1:
            raise DataDirError(f"{path}:{lineno}: expected '<utt1>*<utt2> <0|1>', got {line.rstrip()!r}")
        a, b = fields[0].split("*")
        trials.append(Trial(a, b, fields[1] == "1"))
    return trials


def sniff_trials_format(path: str) -> str:
    """kaldi, voxceleb, espnet or paper_csv, from the first line of a trial list."""
    line = next((line for _, line in text_lines(path)), "")
    fields = line.split()
    if line.startswith("LABEL,SAMPLE1,SAMPLE2"):
        return "paper_csv"
    if len(fields) == 3 and fields[2] in KALDI_LABELS:
        return "kaldi"
    if len(fields) == 3 and fields[0] in ("0", "1"):
        return "voxceleb"
    if len(fields) == 2 and fields[0].count("*") == 1:
        return "espnet"
    raise DataDirError(f"{path}:1: not a trial list in a known form (Kaldi '<utt1> <utt2> target|nontarget', "
                       f"VoxCeleb '<1|0> <a.wav> <b.wav>', ESPnet '<utt1>*<utt2> <0|1>', paper CSV): {line.rstrip()!r}")


def match_trial_utts(trials: List[Trial], utts: Collection[str], path: str,
                     first_line: int = 1) -> List[Trial]:
    """Map the names in a trial list to the utterance ids of a data dir.

    A name that is an id is kept. Otherwise, for lists that name audio files, the
    candidates are the name without its extension (ESPnet's `id10270/x6uYqmx31kE/00001`),
    the VoxCeleb id (`id10270-x6uYqmx31kE-00001`) and the file's stem (`p329_050`);
    exactly one of them must be an id. Raises DataDirError naming the list's line
    (trial i is on line first_line + i) for an unknown or ambiguous name.
    """
    cache: Dict[str, str] = {}

    def match(name: str, lineno: int) -> str:
        if name in utts:
            return name
        if name not in cache:
            stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
            candidates = [stem, stem.rsplit("/", 1)[-1]]
            if stem.count("/") >= 2:
                candidates.append(voxceleb_path_to_utt(stem))
            found = sorted({c for c in candidates if c in utts})
            if len(found) > 1:
                raise DataDirError(f"{path}:{lineno}: {name!r} matches several utterances: {found}")
            if not found:
                others = [repr(c) for c in dict.fromkeys(candidates) if c != name]
                raise DataDirError(f"{path}:{lineno}: utterance {name!r} is not in the data dir"
                                   + (f" (nor is {' or '.join(others)})" if others else ""))
            cache[name] = found[0]
        return cache[name]

    return [Trial(match(a, first_line + i), match(b, first_line + i), t) for i, (a, b, t) in enumerate(trials)]


def read_trials(path: str, fmt: str = "kaldi", scheme: str = "auto") -> List[Trial]:
    """Any supported trial list -> [(utt1, utt2, is_target)] (fmt "auto": sniff_trials_format)."""
    readers = {"kaldi": read_kaldi_trials, "voxceleb": read_voxceleb_trials, "espnet": read_espnet_trials}
    if fmt == "auto":
        fmt = sniff_trials_format(path)
    if fmt == "paper_csv":
        return read_paper_csv_trials(path, scheme)
    if fmt not in readers:
        raise ValueError(f"unknown trial format {fmt!r} (auto, kaldi, voxceleb, paper_csv, espnet)")
    return readers[fmt](path)


def convert_trial_list(path: str, utts: Collection[str], utt_map: Optional[Dict[str, str]] = None,
                       fmt: str = "auto", scheme: str = "auto") -> List[Trial]:
    """Any supported list -> Kaldi trials in a data dir's utterance ids (`utts`): names are
    mapped by match_trial_utts (ids, ESPnet / WeSpeaker paths, VoxCeleb paths, file stems).
    utt_map: the data dir's utt_map ({our id: source id}, as the file holds it) when an import renamed
    the ids (the list's names are then source ids)."""
    if fmt == "auto":
        fmt = sniff_trials_format(path)
    first_line = 1
    if fmt == "voxceleb":
        trials = read_voxceleb_trials(path, keep_paths=True)
    elif fmt == "espnet":
        path = espnet_label_file(path)
        trials = read_espnet_trials(path)
    elif fmt == "paper_csv":
        trials, first_line = read_paper_csv_trials(path, scheme), 2
    else:
        trials = read_trials(path, fmt)
    if utt_map:
        to_ours = {theirs: ours for ours, theirs in utt_map.items()}
        trials = match_trial_utts(trials, set(to_ours), path, first_line)
        trials = [Trial(to_ours[a], to_ours[b], t) for a, b, t in trials]
    else:
        trials = match_trial_utts(trials, utts, path, first_line)
    check_trial_list(trials, path, first_line)
    return trials


def read_kaldi_trials(path: str) -> List[Trial]:
    """Read Kaldi trials `<utt1> <utt2> target|nontarget`; a pair labelled both ways is an error
    (check_trial_list; repeats are kept and not reported here: preparation reports them)."""
    trials = []
    for lineno, line in text_lines(path):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in KALDI_LABELS:
            raise DataDirError(f"{path}:{lineno}: expected '<utt1> <utt2> target|nontarget', got {line.rstrip()!r}")
        trials.append(Trial(fields[0], fields[1], KALDI_LABELS[fields[2]]))
    check_trial_list(trials, path, report=False)
    return trials


def make_balanced_trials(utt2spk: Dict[str, str], seed: int, utt2session: Optional[Dict[str, str]] = None,
                         nontarget_ratio: float = 1.0, max_targets_per_speaker: Optional[int] = None,
                         ) -> List[Trial]:
    """Balanced trials: same-speaker pairs (cross-session only when sessions are given,
    at most max_targets_per_speaker per speaker) and as many different-speaker pairs
    times nontarget_ratio, drawn without repetition; shuffled, deterministic from seed."""
    rng = np.random.default_rng(seed)
    by_spk: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk):
        by_spk.setdefault(utt2spk[utt], []).append(utt)
    if len(by_spk) < 2:
        raise DataDirError(f"balanced trials need at least two speakers, got {len(by_spk)}")
    targets = []
    for spk in sorted(by_spk):
        utts = by_spk[spk]
        pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]
                 if utt2session is None or utt2session[a] != utt2session[b]]
        if max_targets_per_speaker is not None and len(pairs) > max_targets_per_speaker:
            pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), max_targets_per_speaker, replace=False))]
        targets += [Trial(a, b, True) for a, b in pairs]
    utts = sorted(utt2spk)
    n_utts = len(utts)
    counts = np.array([len(v) for v in by_spk.values()])
    max_non = (n_utts * n_utts - int((counts ** 2).sum())) // 2
    n_non = min(int(round(len(targets) * nontarget_ratio)), max_non)
    seen, nontargets = set(), []
    while len(nontargets) < n_non:
        i, j = (int(k) for k in rng.integers(n_utts, size=2))
        key = (min(i, j), max(i, j))
        if utt2spk[utts[i]] == utt2spk[utts[j]] or key in seen:
            continue
        seen.add(key)
        nontargets.append(Trial(utts[i], utts[j], False))
    trials = targets + nontargets
    return [trials[k] for k in rng.permutation(len(trials))]


def write_kaldi_trials(path: str, trials: List[Trial]) -> None:
    atomic_write_text(path, _kaldi_trials_text(trials))


def update_kaldi_trials(path: str, trials: List[Trial]) -> bool:
    """write_kaldi_trials unless `path` already holds these trials (then it is left untouched,
    its mtime too: stage 4 rescores when data/<set>/trials is newer); True when written."""
    text = _kaldi_trials_text(trials)
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def _kaldi_trials_text(trials: List[Trial]) -> str:
    return "".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials)


__all__ = ["Trial", "check_trial_list", "voxceleb_path_to_utt", "read_voxceleb_trials", "read_kaldi_trials",
           "read_espnet_trials", "read_trials", "sniff_trials_format", "match_trial_utts", "convert_trial_list",
           "write_kaldi_trials", "update_kaldi_trials"]
