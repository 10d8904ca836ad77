"""Trial lists: Kaldi `<utt1> <utt2> target|nontarget` and VoxCeleb `<1|0> <a.wav> <b.wav>`."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from upmp.data.kaldi_dir import DataDirError, atomic_write_text

KALDI_LABELS = {"target": True, "nontarget": False}


def voxceleb_path_to_utt(path: str) -> str:
    """`id10270/x6uYqmx31kE/00001.wav` -> `id10270-x6uYqmx31kE-00001` (Kaldi/WeSpeaker-style id)."""
    parts = path.strip().split("/")
    if len(parts) < 3:
        raise ValueError(f"expected <speaker>/<video>/<file>, got {path!r}")
    spk, video, name = parts[-3:]
    stem = name.rsplit(".", 1)[0]
    return f"{spk}-{video}-{stem}"


def read_voxceleb_trials(path: str) -> List[Tuple[str, str, bool]]:
    """Read an official VoxCeleb list (`1 a.wav b.wav`), returning utterance ids."""
    trials = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise DataDirError(f"{path}:{lineno}: expected '<1|0> <enroll.wav> <test.wav>', got {line.rstrip()!r}")
            try:
                a, b = voxceleb_path_to_utt(fields[1]), voxceleb_path_to_utt(fields[2])
            except ValueError as e:
                raise DataDirError(f"{path}:{lineno}: {e}") from None
            trials.append((a, b, fields[0] == "1"))
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


def read_paper_csv_trials(path: str, scheme: str = "auto") -> List[Tuple[str, str, bool]]:
    """The UniPool paper's CSV lists: header LABEL,SAMPLE1,SAMPLE2[,...], one trial per row."""
    import csv
    trials = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:3] != ["LABEL", "SAMPLE1", "SAMPLE2"]:
            raise DataDirError(f"{path}:1: expected a header starting with LABEL,SAMPLE1,SAMPLE2, got {header}")
        for lineno, row in enumerate(reader, 2):
            if len(row) < 3 or row[0] not in ("0", "1"):
                raise DataDirError(f"{path}:{lineno}: expected '<0|1>,<sample1>,<sample2>,...', got {row[:3]}")
            try:
                trials.append((path_to_utt(row[1], scheme), path_to_utt(row[2], scheme), row[0] == "1"))
            except ValueError as e:
                raise DataDirError(f"{path}:{lineno}: {e}") from None
    return trials


def read_espnet_trials(path: str) -> List[Tuple[str, str, bool]]:
    """ESPnet's trial_label: `<utt1>*<utt2> <0|1>`."""
    trials = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1") or fields[0].count("*") != 1:
                raise DataDirError(f"{path}:{lineno}: expected '<utt1>*<utt2> <0|1>', got {line.rstrip()!r}")
            a, b = fields[0].split("*")
            trials.append((a, b, fields[1] == "1"))
    return trials


def read_trials(path: str, fmt: str = "kaldi", scheme: str = "auto") -> List[Tuple[str, str, bool]]:
    """Any supported trial list -> [(utt1, utt2, is_target)]."""
    readers = {"kaldi": read_kaldi_trials, "voxceleb": read_voxceleb_trials, "espnet": read_espnet_trials}
    if fmt == "paper_csv":
        return read_paper_csv_trials(path, scheme)
    if fmt not in readers:
        raise ValueError(f"unknown trial format {fmt!r} (kaldi, voxceleb, paper_csv, espnet)")
    return readers[fmt](path)


def read_kaldi_trials(path: str) -> List[Tuple[str, str, bool]]:
    """Read Kaldi trials `<utt1> <utt2> target|nontarget`."""
    trials = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 3 or fields[2] not in KALDI_LABELS:
                raise DataDirError(f"{path}:{lineno}: expected '<utt1> <utt2> target|nontarget', got {line.rstrip()!r}")
            trials.append((fields[0], fields[1], KALDI_LABELS[fields[2]]))
    return trials


def make_balanced_trials(utt2spk: Dict[str, str], seed: int, utt2session: Optional[Dict[str, str]] = None,
                         nontarget_ratio: float = 1.0, max_targets_per_speaker: Optional[int] = None,
                         ) -> List[Tuple[str, str, bool]]:
    """Balanced trials: same-speaker pairs (cross-session only when sessions are given,
    at most max_targets_per_speaker per speaker) and as many different-speaker pairs
    times nontarget_ratio, drawn without repetition; shuffled, deterministic from seed."""
    rng = np.random.default_rng(seed)
    by_spk: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk):
        by_spk.setdefault(utt2spk[utt], []).append(utt)
    if len(by_spk) < 2:
        raise ValueError("balanced trials need at least two speakers")
    targets = []
    for spk in sorted(by_spk):
        utts = by_spk[spk]
        pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]
                 if utt2session is None or utt2session[a] != utt2session[b]]
        if max_targets_per_speaker is not None and len(pairs) > max_targets_per_speaker:
            pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), max_targets_per_speaker, replace=False))]
        targets += [(a, b, True) for a, b in pairs]
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
        nontargets.append((utts[i], utts[j], False))
    trials = targets + nontargets
    return [trials[k] for k in rng.permutation(len(trials))]


def write_kaldi_trials(path: str, trials: List[Tuple[str, str, bool]]) -> None:
    atomic_write_text(path, "".join(f"{a} {b} {'target' if t else 'nontarget'}\n" for a, b, t in trials))


def read_scores(path: str) -> dict:
    """Read a score file `<utt1> <utt2> <score>` into {(utt1, utt2): score}."""
    scores = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 3:
                raise DataDirError(f"{path}:{lineno}: expected '<utt1> <utt2> <score>', got {line.rstrip()!r}")
            try:
                value = float(fields[2])
            except ValueError:
                raise DataDirError(f"{path}:{lineno}: score is not a number: {fields[2]!r}") from None
            if not np.isfinite(value):
                raise DataDirError(f"{path}:{lineno}: score is not finite: {fields[2]!r}")
            scores[(fields[0], fields[1])] = value
    return scores


def align_scores(trials_path: str, scores_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Scores and boolean target labels in trial order; errors name the missing trial."""
    trials = read_kaldi_trials(trials_path)
    scores = read_scores(scores_path)
    out = np.empty(len(trials))
    labels = np.empty(len(trials), dtype=bool)
    for i, (a, b, t) in enumerate(trials):
        try:
            out[i] = scores[(a, b)]
        except KeyError:
            raise DataDirError(f"{trials_path}:{i + 1}: trial '{a} {b}' has no score in {scores_path}") from None
        labels[i] = t
    return out, labels


__all__ = ["voxceleb_path_to_utt", "read_voxceleb_trials", "read_kaldi_trials",
           "write_kaldi_trials", "read_scores", "align_scores"]
