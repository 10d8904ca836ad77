"""Trial lists: Kaldi `<utt1> <utt2> target|nontarget` and VoxCeleb `<1|0> <a.wav> <b.wav>`."""
from __future__ import annotations

from typing import List, Tuple

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
