"""Reading what scoring needs and writing what it makes: embedding scp files, trial lists, score files.

    emb = load_embeddings("exp/x/embeddings/test/xvector.scp")        # {utt: (E,) float64}
    X, labels = labelled_matrix(emb, "data/train/utt2spk", scp)       # (N, E), (N,) speakers, sorted by utt
    trials = load_trials("data/test/trials")                           # [(utt1, utt2, is_target)], non-empty
    write_scores("scores", [(utt1, utt2), ...], values)                # `<utt1> <utt2> <score>` lines, atomic
    scores = read_scores("scores")                                     # {(utt1, utt2): score}, each trial once
    values, is_target = align_scores("data/test/trials", "scores")    # (N,), (N,) bool in trial order

Embeddings are Kaldi float vectors (kaldiio), as WeSpeaker and Kaldi write them; errors name the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from upmp.data.kaldi_dir import read_table
from upmp.data.trials import read_kaldi_trials
from upmp.errors import DataDirError, ScoringError
from upmp.fileio import atomic_write_text


def load_embeddings(scp: str) -> Dict[str, np.ndarray]:
    """{utt: (E,) float64} of an xvector.scp; a missing scp or ark is one error naming it."""
    import kaldiio
    if not Path(scp).is_file():
        raise DataDirError(f"{scp}: no such file (extract the embeddings first: stage 3)")
    try:
        return {k: np.asarray(v, dtype=np.float64) for k, v in kaldiio.load_scp(scp).items()}
    except FileNotFoundError as e:
        raise DataDirError(f"{scp}: {e.strerror}: {e.filename}") from None


def labelled_matrix(embeddings: Dict[str, np.ndarray], utt2spk_path: str, scp: str) -> Tuple[np.ndarray, np.ndarray]:
    """(N, E) embeddings and (N,) speaker labels, rows sorted by utterance id; every utterance
    must have a speaker in utt2spk."""
    utt2spk = read_table(utt2spk_path)
    missing = [u for u in embeddings if u not in utt2spk]
    if missing:
        raise DataDirError(f"{scp}: utterance {missing[0]!r} has no speaker in {utt2spk_path}")
    keys = sorted(embeddings)
    return np.stack([embeddings[k] for k in keys]), np.array([utt2spk[k] for k in keys])


def load_trials(path: str) -> List[Tuple[str, str, bool]]:
    """Kaldi trials of a file that must hold at least one."""
    trials = read_kaldi_trials(path)
    if not trials:
        raise ScoringError(f"{path}: no trials (the file is empty); give a list of "
                           f"'<utt1> <utt2> target|nontarget' lines")
    return trials


def write_scores(path: str, pairs: Iterable[Sequence[str]], scores: Iterable[float]) -> None:
    """`<utt1> <utt2> <score>` lines (6 decimals) in the order given, written atomically."""
    atomic_write_text(path, "".join(f"{p[0]} {p[1]} {s:.6f}\n" for p, s in zip(pairs, scores)))


def map_score_ids(scores_path: str, utt_map_path: str) -> List[str]:
    """The lines of a score file with both ids rewritten through a `<our id> <source id>` map
    (an imported set's utt_map), in the file's order; an unknown id names the score line."""
    mapping = read_table(utt_map_path)
    lines = []
    with open(scores_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 3:
                raise DataDirError(f"{scores_path}:{lineno}: expected '<utt1> <utt2> <score>', got {line.rstrip()!r}")
            for u in fields[:2]:
                if u not in mapping:
                    raise DataDirError(f"{scores_path}:{lineno}: utterance {u!r} is not in {utt_map_path}")
            lines.append(f"{mapping[fields[0]]} {mapping[fields[1]]} {fields[2]}\n")
    return lines


def read_scores(path: str) -> dict:
    """Read a score file `<utt1> <utt2> <score>` into {(utt1, utt2): score}; a trial scored
    twice is an error (which of the two values would count?)."""
    scores, first_line = {}, {}
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
            key = (fields[0], fields[1])
            if key in scores:
                raise DataDirError(f"{path}:{lineno}: trial '{key[0]} {key[1]}' is scored twice (first on line "
                                   f"{first_line[key]}); remove one of the two lines, or score again")
            scores[key], first_line[key] = value, lineno
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
