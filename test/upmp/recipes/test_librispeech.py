"""LibriSpeech data preparation on fake trees in the official layout (flac made by sox from tones),
and on the paper's real trial lists in ../shared/protocols."""
import csv
import logging
import os
import shutil
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

from fakes.librispeech import HEADER, SPEAKERS, make_librispeech, speakers_txt
from helpers import ROOT, sox_flac, tone
from upmp.data.audio import load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError
from upmp.recipes.librispeech import prepare_librispeech, read_speakers_txt
from upmp.data.trials import read_kaldi_trials

PROTOCOLS = ROOT.parent / "shared" / "protocols" / "unipool-sv"
needs_protocols = pytest.mark.skipif(not PROTOCOLS.is_dir(), reason="shared/protocols not beside the checkout")


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> Path:
    return make_librispeech(tmp_path_factory.mktemp("libri") / "LibriSpeech")


def test_read_speakers_txt(tmp_path):
    p = tmp_path / "SPEAKERS.TXT"
    p.write_text(speakers_txt(SPEAKERS))
    info = read_speakers_txt(p)
    assert info["60"] == ("m", "train-other-500") and info["84"] == ("f", "dev-clean") and len(info) == 10
    p.write_text(HEADER + "14   | F | train-clean-360  | 25.03 | Kristin\n17   | X | train-clean-360 | 25.04 | Gord\n")
    with pytest.raises(DataDirError, match=r"SPEAKERS.TXT:6: expected 'ID \| SEX"):
        read_speakers_txt(p)
    p.write_text(HEADER + "14   | F | train-clean-360\n")
    with pytest.raises(DataDirError, match=r"SPEAKERS.TXT:5: expected"):
        read_speakers_txt(p)


def test_prepare_regenerated_trials(libri, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = prepare_librispeech(str(libri), str(tmp_path / "data"), url_base=None)
    assert "protocol source: regenerated" in caplog.text
    assert "train-clean-360 not found" in caplog.text and "test-other not found" in caplog.text
    subsets = {"train": ("train-clean-100", "train-other-500"), "valid": ("dev-clean", "dev-other"),
               "test": ("test-clean",)}
    for name, subs in subsets.items():
        d = DataDir.load(out[name])     # validated with Kaldi's rules
        spks = sorted((s for s, (_, sub) in SPEAKERS.items() if sub in subs))
        assert sorted(set(d.utt2spk.values())) == sorted(spks)
        expected = sorted(f"{s}-{ch}-{n:04d}" for s in spks for ch in (1000 + list(SPEAKERS).index(s),
                                                                      2000 + list(SPEAKERS).index(s))
                          for n in range(2))
        assert sorted(d.utts) == expected
        assert d.spk2gender == {s: SPEAKERS[s][0].lower() for s in spks}
        for utt in d.utts:      # plain flac paths, read natively at 16 kHz
            spk, chapter, _ = utt.split("-")
            sub = SPEAKERS[spk][1]
            assert d.wav_scp[utt] == str((libri / sub / spk / chapter / f"{utt}.flac").resolve())
            assert d.utt2dur[utt] == pytest.approx(0.3 + 0.1 * int(utt[-1]), abs=1e-3)
        if name != "train":
            trials = read_kaldi_trials(str(out[name] / "trials"))
            assert sum(t for *_, t in trials) == len(spks) * comb(4, 2) and len(trials) == 2 * len(spks) * comb(4, 2)
            assert all((d.utt2spk[a] == d.utt2spk[b]) == t for a, b, t in trials)
    i = list(SPEAKERS).index("121")
    audio = load_audio(DataDir.load(out["test"]).wav_scp[f"121-{1000 + i}-0001"])
    assert np.allclose(audio, tone(0.4, 200 + 50 * i, 16000, seed=10 * i + 1), atol=1e-4)


def test_errors(libri, tmp_path):
    tree = tmp_path / "LibriSpeech"
    shutil.copytree(libri, tree)
    shutil.rmtree(tree / "test-clean")
    with pytest.raises(DataDirError, match=r"no audio for the test set \(looked in test-clean, test-other\)"):
        prepare_librispeech(str(tree), str(tmp_path / "data"), url_base=None)
    shutil.copytree(libri / "test-clean", tree / "test-clean")
    bad = tree / "test-clean" / "61" / "1007" / "62-1007-0000.flac"
    os.link(tree / "test-clean" / "61" / "1007" / "61-1007-0000.flac", bad)
    with pytest.raises(DataDirError, match=r"62-1007-0000.flac: expected <spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac"):
        prepare_librispeech(str(tree), str(tmp_path / "data"), url_base=None)
    bad.unlink()
    (tree / "SPEAKERS.TXT").write_text(speakers_txt({k: v for k, v in SPEAKERS.items() if k != "237"}))
    with pytest.raises(DataDirError, match=r"SPEAKERS.TXT: speaker '237' of .* is not listed"):
        prepare_librispeech(str(tree), str(tmp_path / "data"), url_base=None)
    (tree / "SPEAKERS.TXT").write_text(speakers_txt(SPEAKERS))
    proto = tmp_path / "proto" / "LibriSpeech" / "trials"
    proto.mkdir(parents=True)
    (proto / "trials-dev.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n1,dev-clean/84/84-1004-0000.wav,"
                                          "dev-clean/84/84-1004-0001.wav\n")
    (proto / "trials-test.csv").write_text("LABEL,SAMPLE1,SAMPLE2\n0,test-clean/61/61-1007-0000.wav,"
                                           "test-other/8555/8555-284447-0003.wav\n")
    r = subprocess.run([sys.executable, "-m", "upmp.bin.prepare_librispeech", "--root", str(tree), "--out",
                        str(tmp_path / "data"), "--protocol_dir", str(tmp_path / "proto")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("prepare_librispeech.py: error: ")
    assert "trials-test.csv:2: utterance '8555-284447-0003' of the trial list is not in" in r.stderr
    assert read_kaldi_trials(str(tmp_path / "data" / "librispeech_valid" / "trials")) == \
        [("84-1004-0000", "84-1004-0001", True)]


@needs_protocols
def test_paper_trials_on_a_tree_of_the_papers_names(tmp_path, caplog):
    """Every utterance of the paper's dev and test lists in the official layout (one sox-made flac,
    hard-linked) plus one training utterance: the lists convert completely, 36,427 trials each."""
    root = tmp_path / "LibriSpeech"
    one = sox_flac(tmp_path / "one.flac", 0.1, 300, 16000)
    utts = {"train-clean-100/19/19-198-0000"}
    for name in ("dev", "test"):
        with open(PROTOCOLS / "LibriSpeech" / "trials" / f"trials-{name}.csv", newline="") as f:
            for row in list(csv.reader(f))[1:]:
                utts.update(p[:-4] for p in row[1:3])
    for rel in utts:   # <subset>/<spk>/<spk>-<chapter>-<n> -> <subset>/<spk>/<chapter>/<spk>-<chapter>-<n>.flac
        subset, spk, stem = rel.split("/")
        d = root / subset / spk / stem.split("-")[1]
        d.mkdir(parents=True, exist_ok=True)
        os.link(one, d / f"{stem}.flac")
    shutil.copy(PROTOCOLS / "LibriSpeech" / "speakers" / "SPEAKERS.TXT", root / "SPEAKERS.TXT")
    with caplog.at_level(logging.INFO):
        out = prepare_librispeech(str(root), str(tmp_path / "data"), protocol_dir=str(PROTOCOLS))
    assert "protocol source: local directory" in caplog.text
    for name in ("valid", "test"):
        d = DataDir.load(out[name])
        trials = read_kaldi_trials(str(out[name] / "trials"))
        assert (len(trials), sum(t for *_, t in trials)) == (36427, 18031)
        assert {u for a, b, _ in trials for u in (a, b)} == set(d.utts)
        assert len(set(d.utt2spk.values())) == 73 and set(d.spk2gender.values()) == {"m", "f"}
