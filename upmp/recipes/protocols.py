"""The UniPool paper's protocol files: speaker splits and trial lists (VCTK, LibriSpeech, VoxCeleb).

Layout read (that of ../shared/protocols/unipool-sv and of a user's --protocol_dir; the paper's
repository keeps the same files under data/<corpus>/preprocess/):
    <dir>/VCTK-Corpus/speakers/speaker-{train,valid,test}.csv    ID,... (72 / 18 / 18 speakers)
    <dir>/VCTK-Corpus/trials/trials-{valid,test}.csv              LABEL,SAMPLE1,SAMPLE2,...
    <dir>/LibriSpeech/trials/trials-{dev,test}.csv                (speaker splits = the subsets)
    <dir>/VoxCeleb/speakers/speaker-vox{1,2}-{dev,test}.csv       ID
    <dir>/VoxCeleb/trials/trials-vox1.csv
    <dir>/VoxCeleb/trials/trials-vox2.csv                         (corpus key voxceleb_vox2_trials)
Files are resolved in this order: a local directory given by the user, a download from the
paper's repository (raw URLs at a fixed commit) into a cache directory (same layout, so a cache
can be given as a local directory later), or None, and the caller regenerates equivalent
files with the same rules (seeded speaker split of the same sizes, balanced trials).
"""
from __future__ import annotations

import csv
import logging
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Container, Dict, List, Mapping, Optional, Sequence

import numpy as np

from upmp.data.kaldi_dir import DataDirError, c_sort_key
from upmp.fileio import atomic_write_text
from upmp.data.trials import Trial, check_trial_list, make_balanced_trials, read_paper_csv_trials

logger = logging.getLogger(__name__)

PAPER_REPO = "sadPororo/UniPool-SV"
PAPER_COMMIT = "d5b4641234add6b7416a47489c1802e704c5e4a5"
PAPER_URL = f"https://raw.githubusercontent.com/{PAPER_REPO}/{PAPER_COMMIT}/data"

# Protocol files per corpus, relative to a protocol dir; in the repository: data/<corpus>/preprocess/<kind>/<file>.
PROTOCOL_FILES: Dict[str, Dict[str, str]] = {
    "vctk": {
        "speakers_train": "VCTK-Corpus/speakers/speaker-train.csv",
        "speakers_valid": "VCTK-Corpus/speakers/speaker-valid.csv",
        "speakers_test": "VCTK-Corpus/speakers/speaker-test.csv",
        "trials_valid": "VCTK-Corpus/trials/trials-valid.csv",
        "trials_test": "VCTK-Corpus/trials/trials-test.csv",
    },
    "librispeech": {
        "trials_valid": "LibriSpeech/trials/trials-dev.csv",
        "trials_test": "LibriSpeech/trials/trials-test.csv",
    },
    "voxceleb": {
        "speakers_vox1_dev": "VoxCeleb/speakers/speaker-vox1-dev.csv",
        "speakers_vox1_test": "VoxCeleb/speakers/speaker-vox1-test.csv",
        "speakers_vox2_dev": "VoxCeleb/speakers/speaker-vox2-dev.csv",
        "speakers_vox2_test": "VoxCeleb/speakers/speaker-vox2-test.csv",
        "trials_vox1": "VoxCeleb/trials/trials-vox1.csv",
    },
    # the validation list of the authors' VoxCeleb1 runs (recipe option --protocol authors); not among
    # the files of ../shared/protocols/unipool-sv, so resolved apart from the other VoxCeleb files
    "voxceleb_vox2_trials": {
        "trials_vox2": "VoxCeleb/trials/trials-vox2.csv",
    },
}
# First header field of each kind of file: a download that is not such a CSV (an HTML error
# page of a proxy, say) is rejected rather than cached.
HEADER_START = {"speakers": "ID", "trials": "LABEL"}

Opener = Callable[[str, float], bytes]


def _urlopen(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def remote_path(rel: str) -> str:
    """`VCTK-Corpus/trials/trials-test.csv` -> `VCTK-Corpus/preprocess/trials/trials-test.csv`."""
    corpus, rest = rel.split("/", 1)
    return f"{corpus}/preprocess/{rest}"


def _check_header(rel: str, text: str, where: str) -> None:
    expected = HEADER_START[rel.split("/")[1]]
    first = text.split("\n", 1)[0].split(",")[0].strip()
    if first != expected:
        raise DataDirError(f"{where}:1: not a protocol CSV (header starts with {first[:40]!r}, "
                           f"expected {expected!r})")


def resolve_protocol(corpus: str, protocol_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                     url_base: Optional[str] = PAPER_URL, timeout: float = 10.0,
                     opener: Opener = _urlopen) -> Optional[Dict[str, Path]]:
    """{key: local path} of the corpus's protocol files, or None when they cannot be had.

    protocol_dir: a user's local copy; every file must be there (a missing one is an error).
    Otherwise cache_dir is used if it already holds every file, else each missing file is
    downloaded from <url_base>/<corpus>/preprocess/... into cache_dir (atomically, once every
    file has arrived); an unreachable URL or an unusable download (not UTF-8, not the expected
    CSV: an HTML page of a proxy, say) gives None with a warning and writes nothing (the caller
    regenerates). url_base None/"" skips the download. Logs one line saying which source was used.
    """
    files = PROTOCOL_FILES[corpus]
    if protocol_dir:
        paths = {k: Path(protocol_dir) / rel for k, rel in files.items()}
        for path in paths.values():
            if not path.is_file():
                raise DataDirError(f"{path}: protocol file missing from --protocol_dir {protocol_dir}")
        logger.info("protocol source: local directory %s (the paper's %s files)", protocol_dir, corpus)
        return paths
    if not cache_dir:
        logger.info("protocol source: regenerated (no --protocol_dir and no cache directory)")
        return None
    paths = {k: Path(cache_dir) / rel for k, rel in files.items()}
    missing = [k for k, p in paths.items() if not p.is_file()]
    if not missing:
        logger.info("protocol source: cached download in %s (the paper's %s files, %s@%s)",
                    cache_dir, corpus, PAPER_REPO, PAPER_COMMIT[:7])
        return paths
    if not url_base:
        logger.info("protocol source: regenerated (download disabled, %s not in cache %s)", corpus, cache_dir)
        return None
    texts = {}
    for key in missing:
        url = f"{url_base.rstrip('/')}/{remote_path(files[key])}"
        try:
            data = opener(url, timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            logger.warning("cannot download %s: %s", url, getattr(e, "reason", e))
            logger.info("protocol source: regenerated (the paper's repository is not reachable)")
            return None
        try:
            texts[key] = data.decode("utf-8")
            _check_header(files[key], texts[key], url)
        except (UnicodeDecodeError, DataDirError) as e:
            logger.warning("unusable download %s: %s", url, e)
            logger.info("protocol source: regenerated (the download is not the paper's %s files)", corpus)
            return None
    for key, text in texts.items():
        atomic_write_text(paths[key], text)
    logger.info("protocol source: downloaded from %s into %s (the paper's %s files)", url_base, cache_dir, corpus)
    return paths


def read_speaker_csv(path: Path) -> List[str]:
    """A paper speaker list (header `ID,...`) -> speaker ids in file order."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != "ID":
        raise DataDirError(f"{path}:1: expected a CSV header starting with ID")
    ids = []
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not row[0].strip():
            raise DataDirError(f"{path}:{lineno}: empty speaker id")
        ids.append(row[0].strip())
    if len(set(ids)) != len(ids):
        dup = next(s for s in ids if ids.count(s) > 1)
        raise DataDirError(f"{path}:{ids.index(dup) + 2}: speaker {dup!r} listed twice")
    return ids


def split_sizes(num_speakers: int, paper_sizes: Mapping[str, int]) -> Dict[str, int]:
    """The paper's split sizes when the corpus has its speaker count, else the same proportions
    (largest remainders, at least one speaker per split)."""
    total = sum(paper_sizes.values())
    if num_speakers == total:
        return dict(paper_sizes)
    if num_speakers < len(paper_sizes):
        raise DataDirError(f"cannot split {num_speakers} speakers into {len(paper_sizes)} sets")
    exact = {k: num_speakers * v / total for k, v in paper_sizes.items()}
    sizes = {k: max(1, int(math.floor(x))) for k, x in exact.items()}
    order = sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
    i = 0
    while sum(sizes.values()) != num_speakers:
        k = order[i % len(order)]
        step = 1 if sum(sizes.values()) < num_speakers else -1
        if sizes[k] + step >= 1:
            sizes[k] += step
        i += 1
    return sizes


def split_speakers(speakers: Sequence[str], sizes: Mapping[str, int], seed: int,
                   strata: Optional[Mapping[str, str]] = None) -> Dict[str, List[str]]:
    """Seeded speaker split with exactly `sizes` speakers per set, stratified by `strata`
    (e.g. gender): speakers ordered by stratum (shuffled within) are dealt to the sets in an
    evenly interleaved pattern, so each stratum is shared in proportion to the set sizes."""
    if sum(sizes.values()) != len(speakers):
        raise ValueError(f"split sizes {dict(sizes)} do not add up to {len(speakers)} speakers")
    rng = np.random.default_rng(seed)
    shuffled = [speakers[i] for i in rng.permutation(len(speakers))]
    if strata is not None:
        shuffled.sort(key=lambda s: strata.get(s, ""))
    names, n = list(sizes), len(speakers)
    taken = {k: 0 for k in names}
    out: Dict[str, List[str]] = {k: [] for k in names}
    for i, spk in enumerate(shuffled):
        # the set furthest behind its share of the first i + 1 speakers
        k = max(names, key=lambda k: sizes[k] * (i + 1) / n - taken[k])
        taken[k] += 1
        out[k].append(spk)
    return {k: sorted(v, key=c_sort_key) for k, v in out.items()}


def regenerate_trials(utt2spk: Mapping[str, str], class_size: int, seed: int) -> List[Trial]:
    """Balanced trials by the paper's rule: ceil(class_size / #speakers) target pairs per speaker
    (VCTK: 8,000 -> 445 x 18 = 8,010; LibriSpeech: 18,000 -> 247 x 73 = 18,031), as many
    nontarget pairs, no utterance paired with itself."""
    num_speakers = len(set(utt2spk.values()))
    if num_speakers < 2:
        raise DataDirError(f"cannot regenerate trials for {num_speakers} speaker(s): balanced trials need "
                           f"at least two (a corpus this small needs the paper's protocol files)")
    return make_balanced_trials(dict(utt2spk), seed,
                                max_targets_per_speaker=int(math.ceil(class_size / num_speakers)))


def load_paper_trials(path: Path, utts: Container[str], root: str) -> List[Trial]:
    """A paper trial CSV -> Kaldi trials; every utterance must be in `utts` (the prepared set)."""
    trials = read_paper_csv_trials(str(path), scheme="basename")
    for i, (a, b, _) in enumerate(trials):
        for u in (a, b):
            if u not in utts:
                raise DataDirError(f"{path}:{i + 2}: utterance {u!r} of the trial list is not in the "
                                   f"prepared data (missing under {root}?)")
    check_trial_list(trials, str(path), first_line=2)
    return trials


__all__ = ["PAPER_URL", "PAPER_COMMIT", "PROTOCOL_FILES", "resolve_protocol", "read_speaker_csv",
           "split_sizes", "split_speakers", "regenerate_trials", "load_paper_trials"]
