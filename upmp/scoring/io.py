"""Reading what scoring needs and writing what it makes: embedding scp files, trial lists, score files.

    emb = load_embeddings("exp/x/embeddings/test/xvector.scp")        # {utt: (E,) float64}
    X, labels = labelled_matrix(emb, "data/train/utt2spk", scp)       # (N, E), (N,) speakers, sorted by utt
    trials = load_trials("data/test/trials")                           # [(utt1, utt2, is_target)], non-empty
    write_scores("scores", [(utt1, utt2), ...], values)                # `<utt1> <utt2> <score>` lines, atomic
    lines = read_score_lines("scores")                                 # [(utt1, utt2, score, line number)]
    values, is_target = align_scores("data/test/trials", "scores")    # (N,), (N,) bool in trial order
    S = system_scores(pairs, ["a/test.cosine", "b/test.plda"], "data/test/trials")  # (N, K), strict: fusion

Embeddings are Kaldi float vectors (kaldiio), as WeSpeaker and Kaldi write them; errors name the file.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from upmp.data.kaldi_dir import read_table
from upmp.data.trials import Trial, read_kaldi_trials
from upmp.errors import DataDirError, ScoringError
from upmp.fileio import atomic_write_text


def read_vectors(scp: str, recipe_dir: Optional[Path] = None) -> Iterator[Tuple[int, str, np.ndarray]]:
    """(line number, utt, (E,) vector) of a Kaldi vector scp (`<utt> <file.ark:offset>`), in order.
    Every read of an embedding file goes through here: an entry that cannot be read (a truncated or
    overwritten ark, a missing ark, a bad offset) is a DataDirError naming the scp line, the utterance
    and the ark. recipe_dir: stage 3 writes ark paths relative to the recipe dir; a relative ark not
    found from the current directory is read from there."""
    import kaldiio
    with open(scp, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split(maxsplit=1)
            if len(fields) != 2:
                raise DataDirError(f"{scp}:{lineno}: expected '<utt> <file.ark:offset>', got {line.rstrip()!r}")
            utt, entry = fields[0], fields[1].strip()
            if recipe_dir is not None:
                entry = _from_recipe_dir(entry, recipe_dir, f"{scp}:{lineno}", utt)
            try:
                vector = np.asarray(kaldiio.load_mat(entry))
            except OSError as e:
                raise DataDirError(f"{scp}:{lineno}: embedding of {utt!r}: {e.strerror}: {e.filename or entry}; "
                                   f"extract the embeddings again (stage 3)") from None
            except Exception as e:  # kaldiio's reader on bytes that are not (or no longer) what the scp says
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                raise DataDirError(f"{scp}:{lineno}: cannot read the embedding of {utt!r} at {entry} ({why}): the "
                                   f"ark is truncated or was overwritten; extract the embeddings again "
                                   f"(stage 3)") from None
            if vector.ndim != 1:
                raise DataDirError(f"{scp}:{lineno}: {utt!r} at {entry} is a {vector.ndim}-d array, not an "
                                   f"embedding vector (an scp of layer stacks or features?)")
            yield lineno, utt, vector


def _from_recipe_dir(entry: str, recipe_dir: Path, where: str, utt: str) -> str:
    """`<ark>:<offset>[<slice>]` with the ark looked up from the current directory, then from recipe_dir."""
    m = re.fullmatch(r"(.+):(\d+(?:\[[^\]]*\])?)", entry)
    ark, tail = m.groups() if m else (entry, None)
    if ark.strip().endswith("|") or Path(ark).is_file():
        return entry
    if not Path(ark).is_absolute() and (recipe_dir / ark).is_file():
        return f"{recipe_dir / ark}:{tail}" if tail else str(recipe_dir / ark)
    raise DataDirError(f"{where}: {ark} (of {utt}) is not found from {Path.cwd()} nor from the recipe dir "
                       f"{recipe_dir}; run from the recipe dir that extracted it, or extract the embeddings "
                       f"again (stage 3)")


def load_embeddings(scp: str) -> Dict[str, np.ndarray]:
    """{utt: (E,) float64} of an xvector.scp (read_vectors); a missing scp is one error naming it."""
    if not Path(scp).is_file():
        raise DataDirError(f"{scp}: no such file (extract the embeddings first: stage 3)")
    return {utt: v.astype(np.float64) for _, utt, v in read_vectors(scp)}


def labelled_matrix(embeddings: Dict[str, np.ndarray], utt2spk_path: str, scp: str) -> Tuple[np.ndarray, np.ndarray]:
    """(N, E) embeddings and (N,) speaker labels, rows sorted by utterance id; every utterance
    must have a speaker in utt2spk."""
    utt2spk = read_table(utt2spk_path)
    missing = [u for u in embeddings if u not in utt2spk]
    if missing:
        raise DataDirError(f"{scp}: utterance {missing[0]!r} has no speaker in {utt2spk_path}")
    keys = sorted(embeddings)
    return np.stack([embeddings[k] for k in keys]), np.array([utt2spk[k] for k in keys])


def load_trials(path: str) -> List[Trial]:
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


def read_score_lines(path: str) -> List[Tuple[str, str, float, int]]:
    """The lines of a score file `<utt1> <utt2> <score>` as (utt1, utt2, score, line number), in
    file order; a trial may appear more than once (as often as its trial list lists it)."""
    lines = []
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
            lines.append((fields[0], fields[1], value, lineno))
    return lines


def read_scores(path: str, listed: Optional[Dict[Tuple[str, str], int]] = None) -> Dict[Tuple[str, str], List[float]]:
    """A score file as {(utt1, utt2): [score, ...]} in file order. `listed` ({trial: times its
    trial list lists it}; default once each): a trial may be scored once, or once per listing;
    more lines than that is an error (which of the values would count?)."""
    scores: Dict[Tuple[str, str], List[float]] = {}
    first_line: Dict[Tuple[str, str], int] = {}
    for a, b, value, lineno in read_score_lines(path):
        key = (a, b)
        values = scores.setdefault(key, [])
        times = max(1, (listed or {}).get(key, 1))
        if len(values) == times:
            if times == 1:
                raise DataDirError(f"{path}:{lineno}: trial '{a} {b}' is scored twice (first on line "
                                   f"{first_line[key]}); remove one of the two lines, or score again")
            raise DataDirError(f"{path}:{lineno}: trial '{a} {b}' is scored {times + 1} times (first on line "
                               f"{first_line[key]}) but its trial list lists it {times} times; remove the extra "
                               f"lines, or score again")
        values.append(value)
        first_line.setdefault(key, lineno)
    return scores


def align_scores(trials_path: str, scores_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Scores and boolean target labels in trial order; errors name the missing trial. A trial the
    list repeats counts as often as it is listed: its score lines are matched in order, or its one
    line counts for each listing (a list is scored as given)."""
    trials = read_kaldi_trials(trials_path)
    listed = Counter((a, b) for a, b, _ in trials)
    scores = read_scores(scores_path, listed)
    out = np.empty(len(trials))
    labels = np.empty(len(trials), dtype=bool)
    seen: Counter = Counter()
    for i, (a, b, t) in enumerate(trials):
        values = scores.get((a, b))
        if not values:
            raise DataDirError(f"{trials_path}:{i + 1}: trial '{a} {b}' has no score in {scores_path}")
        if len(values) not in (1, listed[(a, b)]):
            raise DataDirError(f"{scores_path}: trial '{a} {b}' is scored {len(values)} times but {trials_path} "
                               f"lists it {listed[(a, b)]} times; score it once or once per listing (score again)")
        out[i] = values[seen[(a, b)] if len(values) > 1 else 0]
        seen[(a, b)] += 1
        labels[i] = t
    return out, labels


def system_scores(reference: Sequence[Tuple[str, str]], paths: Sequence[str], reference_name: str) -> np.ndarray:
    """(N, K): the score of each reference trial (utt1, utt2) in each of K score files, matched by key
    (a trial the reference repeats is matched to the file's lines of it in order). Every file must
    score exactly the reference's trials, as often as it lists them: a trial missing, extra or scored
    another number of times is one DataDirError naming the file and the first trial that differs."""
    out = np.empty((len(reference), len(paths)))
    listed = Counter(reference)
    hint = "fusion needs every system scored on the same trials (score them on one trial list)"
    for k, path in enumerate(paths):
        by_key: Dict[Tuple[str, str], List[Tuple[float, int]]] = {}
        for a, b, value, lineno in read_score_lines(path):
            by_key.setdefault((a, b), []).append((value, lineno))
        seen: Counter = Counter()
        for i, key in enumerate(reference):
            values = by_key.get(key, [])
            if seen[key] >= len(values):
                times = f" {listed[key]} times, here {len(values)}" if values else ""
                raise DataDirError(f"{path}: trial '{key[0]} {key[1]}' (line {i + 1} of {reference_name}{times}) "
                                   f"has no score here; {hint}")
            out[i, k] = values[seen[key]][0]
            seen[key] += 1
        extra = [(lineno, key) for key, values in by_key.items() for _, lineno in values[listed.get(key, 0):]]
        if extra:
            lineno, (a, b) = min(extra)
            what = "is scored more often than listed in" if listed.get((a, b)) else "is not in"
            raise DataDirError(f"{path}:{lineno}: trial '{a} {b}' {what} {reference_name}; {hint}")
    return out
