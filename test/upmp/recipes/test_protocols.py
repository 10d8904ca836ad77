"""upmp.recipes.protocols: resolving the paper's protocol files (local dir, download, cache, fallback),
seeded speaker splits and regenerated balanced trials."""
import logging
import re
import urllib.error
from collections import Counter
from math import comb
from pathlib import Path

import pytest

from upmp.data.kaldi_dir import DataDirError
from upmp.recipes.protocols import (PAPER_COMMIT, PAPER_URL, PROTOCOL_FILES, read_speaker_csv, regenerate_trials,
                                 remote_path, resolve_protocol, split_sizes, split_speakers)

VCTK_FILES = {
    "VCTK-Corpus/speakers/speaker-train.csv": "ID,GENDER\np225,F\np226,M\n",
    "VCTK-Corpus/speakers/speaker-valid.csv": "ID,GENDER\np227,M\n",
    "VCTK-Corpus/speakers/speaker-test.csv": "ID,GENDER\np228,F\n",
    "VCTK-Corpus/trials/trials-valid.csv": "LABEL,SAMPLE1,SAMPLE2\n1,p227/p227_025.wav,p227/p227_026.wav\n",
    "VCTK-Corpus/trials/trials-test.csv": "LABEL,SAMPLE1,SAMPLE2\n1,p228/p228_025.wav,p228/p228_026.wav\n",
}


def write_files(base: Path, files: dict, remote: bool = False) -> None:
    for rel, text in files.items():
        path = base / (remote_path(rel) if remote else rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_paper_url_and_remote_layout():
    """The raw URLs point at the fixed commit; repository paths are data/<corpus>/preprocess/<kind>/<file>
    (as `git ls-tree` of the paper's repository lists them)."""
    assert PAPER_URL == f"https://raw.githubusercontent.com/sadPororo/UniPool-SV/{PAPER_COMMIT}/data"
    assert len(PAPER_COMMIT) == 40 and PAPER_COMMIT.startswith("d5b4641")
    assert remote_path(PROTOCOL_FILES["librispeech"]["trials_valid"]) == "LibriSpeech/preprocess/trials/trials-dev.csv"
    assert remote_path(PROTOCOL_FILES["voxceleb"]["speakers_vox2_dev"]) == \
        "VoxCeleb/preprocess/speakers/speaker-vox2-dev.csv"


def test_local_dir_first_and_missing_file_is_an_error(tmp_path, caplog):
    write_files(tmp_path / "proto", VCTK_FILES)
    calls = []
    with caplog.at_level(logging.INFO):
        paths = resolve_protocol("vctk", str(tmp_path / "proto"), str(tmp_path / "cache"),
                                 opener=lambda url, t: calls.append(url))
    assert paths["trials_test"] == tmp_path / "proto" / "VCTK-Corpus/trials/trials-test.csv"
    assert calls == [] and "protocol source: local directory" in caplog.text
    (tmp_path / "proto" / "VCTK-Corpus/speakers/speaker-valid.csv").unlink()
    with pytest.raises(DataDirError, match=r"speaker-valid.csv: protocol file missing from --protocol_dir"):
        resolve_protocol("vctk", str(tmp_path / "proto"))


def test_download_from_file_url_into_cache_then_cache_reused(tmp_path, caplog):
    write_files(tmp_path / "repo", VCTK_FILES, remote=True)
    url = (tmp_path / "repo").as_uri()
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        paths = resolve_protocol("vctk", None, str(cache), url)
    assert "protocol source: downloaded from" in caplog.text
    for key, rel in PROTOCOL_FILES["vctk"].items():
        assert paths[key] == cache / rel and paths[key].read_text() == VCTK_FILES[rel]
    assert not list(cache.rglob(".*"))  # no temporary files left
    caplog.clear()
    with caplog.at_level(logging.INFO):  # second run: the cache, no network even when unreachable
        again = resolve_protocol("vctk", None, str(cache), "file:///nonexistent/base")
    assert again == paths and "protocol source: cached download" in caplog.text
    # the cache has the local-dir layout, so it can be given as --protocol_dir
    assert resolve_protocol("vctk", str(cache)) == paths


def test_unreachable_falls_back_to_regeneration(tmp_path, caplog):
    def timeout(url, t):
        assert url.startswith(PAPER_URL) and t == 10.0
        raise urllib.error.URLError("timed out")
    with caplog.at_level(logging.INFO):
        assert resolve_protocol("librispeech", None, str(tmp_path / "cache"), opener=timeout) is None
        assert resolve_protocol("vctk", None, str(tmp_path / "cache"), "file:///nonexistent/base") is None
        assert resolve_protocol("vctk", None, str(tmp_path / "cache"), None) is None
    assert caplog.text.count("protocol source: regenerated") == 3 and "timed out" in caplog.text
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.csv"))


@pytest.mark.parametrize("bad, message", [
    (b"<html>sign in to the wifi</html>", r"trials-test.csv:1: not a protocol CSV \(header starts with '<html>"),
    (b"LABEL,SAMPLE1,SAMPLE2\n1,p228\xff.wav,p228_026.wav\n", r"trials-test.csv: 'utf-8' codec can't decode"),
    (VCTK_FILES["VCTK-Corpus/speakers/speaker-test.csv"].encode(), r"trials-test.csv:1: not a protocol CSV"),
])
def test_unusable_download_falls_back_to_regeneration(tmp_path, caplog, bad, message):
    """An HTML page, a non-UTF-8 body or a file of the wrong kind, here as the last file: a warning,
    regeneration, and nothing cached (not even the good files downloaded before it)."""
    def opener(url, t):
        rel = next(r for r in VCTK_FILES if url.endswith(remote_path(r)))
        return bad if rel.endswith("trials-test.csv") else VCTK_FILES[rel].encode()
    with caplog.at_level(logging.INFO):
        assert resolve_protocol("vctk", None, str(tmp_path / "cache"), opener=opener) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and re.search(r"unusable download .*" + message, warnings[0]), warnings
    assert "protocol source: regenerated (the download is not the paper's vctk files)" in caplog.text
    assert not (tmp_path / "cache").exists() or not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_read_speaker_csv_errors(tmp_path):
    p = tmp_path / "speaker-test.csv"
    p.write_text("ID,GENDER\np225,F\np226,M\n")
    assert read_speaker_csv(p) == ["p225", "p226"]
    p.write_text("NAME\np225\n")
    with pytest.raises(DataDirError, match=r"speaker-test.csv:1: expected a CSV header"):
        read_speaker_csv(p)
    p.write_text("ID\np225\np226\np225\n")
    with pytest.raises(DataDirError, match=r"speaker-test.csv:2: speaker 'p225' listed twice"):
        read_speaker_csv(p)


def test_split_sizes():
    assert split_sizes(108, {"train": 72, "valid": 18, "test": 18}) == {"train": 72, "valid": 18, "test": 18}
    assert split_sizes(12, {"train": 72, "valid": 18, "test": 18}) == {"train": 8, "valid": 2, "test": 2}
    assert split_sizes(4, {"train": 72, "valid": 18, "test": 18}) == {"train": 2, "valid": 1, "test": 1}
    assert sum(split_sizes(107, {"train": 72, "valid": 18, "test": 18}).values()) == 107
    with pytest.raises(DataDirError, match="cannot split 2 speakers"):
        split_sizes(2, {"train": 72, "valid": 18, "test": 18})


def test_split_speakers_exact_sizes_stratified_and_seeded():
    speakers = [f"p{i}" for i in range(200, 308)]
    gender = {s: "f" if i % 3 else "m" for i, s in enumerate(speakers)}  # 72 f, 36 m
    sizes = {"train": 72, "valid": 18, "test": 18}
    split = split_speakers(speakers, sizes, seed=3, strata=gender)
    assert {k: len(v) for k, v in split.items()} == sizes
    assert sorted(sum(split.values(), [])) == sorted(speakers)
    for name, n in sizes.items():  # each set gets its share of each gender (2 f : 1 m), +-1
        females = sum(gender[s] == "f" for s in split[name])
        assert abs(females - n * 2 / 3) <= 1, (name, females)
    assert split == split_speakers(speakers, sizes, seed=3, strata=gender)
    assert split != split_speakers(speakers, sizes, seed=4, strata=gender)


def test_regenerate_trials_follows_the_papers_rule():
    # 5 speakers x 6 utterances: 15 pairs each; class size 40 -> ceil(40 / 5) = 8 targets per speaker
    utt2spk = {f"s{s}_{u:03d}": f"s{s}" for s in range(5) for u in range(25, 31)}
    trials = regenerate_trials(utt2spk, 40, seed=0)
    targets = [t for t in trials if t[2]]
    assert len(targets) == 40 and len(trials) == 80
    assert Counter(utt2spk[a] for a, _, _ in targets) == {f"s{s}": 8 for s in range(5)}
    for a, b, t in trials:
        assert a != b and (utt2spk[a] == utt2spk[b]) == t
    assert len({frozenset((a, b)) for a, b, _ in trials}) == 80
    # a cap above the number of pairs keeps every pair
    assert sum(t for *_, t in regenerate_trials(utt2spk, 1000, seed=0)) == 5 * comb(6, 2)
    assert regenerate_trials(utt2spk, 40, seed=0) == trials
    with pytest.raises(DataDirError, match=r"cannot regenerate trials for 1 speaker"):
        regenerate_trials({"s0_025": "s0", "s0_026": "s0"}, 40, seed=0)

