"""VCTK data preparation on fake trees in the official layouts (flac / wav made by sox from tones),
and on the paper's real protocol files in ../shared/protocols."""
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
import soundfile

from fakes.vctk import INFO, PROMPTS, SPEAKERS, expected_utts, make_vctk_092
from helpers import ROOT, sox_flac, tone
from upmp.data.audio import load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError, read_table, validate_data_dir
from upmp.data.trials import read_kaldi_trials
from upmp.recipes.vctk import prepare_vctk, read_speaker_info

PROTOCOLS = ROOT.parent / "shared" / "protocols" / "unipool-sv"
needs_protocols = pytest.mark.skipif(not PROTOCOLS.is_dir(), reason="shared/protocols not beside the checkout")


@pytest.fixture(scope="module")
def vctk_092(tmp_path_factory) -> Path:
    return make_vctk_092(tmp_path_factory.mktemp("vctk") / "VCTK-Corpus-0.92")


def test_read_speaker_info(tmp_path):
    p = tmp_path / "speaker-info.txt"
    p.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  F    English    Southern  England\n"
                 "p226  22  M    English    Surrey\ns5  22  F  British  (extra speaker)\n\n")
    assert read_speaker_info(p) == {"p225": (23, "f"), "p226": (22, "m"), "s5": (22, "f")}
    p.write_text("ID  AGE  GENDER  ACCENTS  REGION\n225  23  F  English\n226  22  English  Surrey\n")
    with pytest.raises(DataDirError, match=r"speaker-info.txt:3: expected 'ID AGE GENDER"):
        read_speaker_info(p)
    p.write_text("225  23  F  English\np225  23  F  English\n")
    with pytest.raises(DataDirError, match=r"speaker-info.txt:2: speaker 'p225' listed twice"):
        read_speaker_info(p)


def test_prepare_092_regenerated_protocol(vctk_092, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        out = prepare_vctk(str(vctk_092), str(tmp_path / "data"), url_base=None,
                           cache_dir=str(tmp_path / "data/local/unipool-sv"), seed=0)
    assert "protocol source: regenerated" in caplog.text
    sets = {k: DataDir.load(v) for k, v in out.items()}   # load() validates with Kaldi's rules
    spk = {k: set(d.utt2spk.values()) for k, d in sets.items()}
    assert {k: len(v) for k, v in spk.items()} == {"train": 8, "valid": 2, "test": 2}  # 72/18/18 of 12
    assert set().union(*spk.values()) == set(SPEAKERS) and sum(map(len, spk.values())) == 12
    assert sorted(sum((d.utts for d in sets.values()), [])) == expected_utts(SPEAKERS)  # no p315, no 001-024
    for name, d in sets.items():
        assert sorted(d.utts) == expected_utts(spk[name])
        assert all(g == SPEAKERS[s].lower() for s, g in d.spk2gender.items()) and set(d.spk2gender) == spk[name]
    test = sets["test"]
    utt = test.utts[0]
    flac = (vctk_092 / "wav48_silence_trimmed" / utt.split("_")[0] / f"{utt}_mic1.flac").resolve()
    assert test.wav_scp[utt] == f"sox {flac} -t wav -r 16000 -b 16 -c 1 - |"
    samples = load_audio(test.wav_scp[utt])       # the pipe decodes to 16 kHz
    assert abs(len(samples) - test.utt2dur[utt] * 16000) <= 2
    assert test.utt2dur[utt] == pytest.approx(soundfile.info(str(flac)).duration, abs=1e-3)
    for name in ("valid", "test"):
        trials = read_kaldi_trials(str(out[name] / "trials"))
        # 2 speakers x C(3, 2) = 6 target pairs (below the paper's cap), as many nontargets
        assert sum(t for *_, t in trials) == 2 * comb(3, 2) and len(trials) == 12
        for a, b, t in trials:
            assert a in sets[name].utt2spk and b in sets[name].utt2spk
            assert (sets[name].utt2spk[a] == sets[name].utt2spk[b]) == t
    assert "trials" not in os.listdir(out["train"])
    again = prepare_vctk(str(vctk_092), str(tmp_path / "again"), url_base=None, seed=0)
    assert (again["test"] / "trials").read_text() == (out["test"] / "trials").read_text()


def test_mic2_and_kaldi_validator(vctk_092, tmp_path):
    out = prepare_vctk(str(vctk_092), str(tmp_path / "data"), mic="mic2", url_base=None)
    wav = read_table(out["valid"] / "wav.scp", max_fields=None)
    assert all("_mic2.flac -t wav" in v for v in wav.values())
    r = subprocess.run([str(ROOT / "egs/TEMPLATE/sv1/utils/validate_data_dir.sh"), "--no-text", "--no-feats",
                        str(out["train"])], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "Successfully validated" in r.stdout, r.stderr
    with pytest.raises(DataDirError, match="--mic must be mic1 or mic2"):
        prepare_vctk(str(vctk_092), str(tmp_path / "x"), mic="mic3", url_base=None)


def test_old_wav48_layout(tmp_path):
    """VCTK 0.80: wav48/<spk>/<spk>_<MMM>.wav at 48 kHz -> sox pipe; a 16 kHz wav -> its plain path."""
    root = tmp_path / "VCTK-Corpus"
    speakers = SPEAKERS
    for i, spk in enumerate(speakers):
        for j, n in enumerate(PROMPTS):
            rate = 16000 if spk == "p225" else 48000
            path = root / "wav48" / spk / f"{spk}_{n:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, tone(0.2, 200 + 30 * i, rate, seed=j), rate, subtype="PCM_16")
    (root / "speaker-info.txt").write_text(INFO.replace("p2", "2"))   # the old file has bare numbers
    out = prepare_vctk(str(root), str(tmp_path / "data"), url_base=None)
    wav = {}
    for d in out.values():
        validate_data_dir(d)
        wav.update(read_table(d / "wav.scp", max_fields=None))
    assert sorted(wav) == expected_utts(speakers)
    assert wav["p225_025"] == str((root / "wav48/p225/p225_025.wav").resolve())
    assert wav["p226_027"] == f"sox {(root / 'wav48/p226/p226_027.wav').resolve()} -t wav -r 16000 -b 16 -c 1 - |"
    assert np.allclose(load_audio(wav["p225_025"]), tone(0.2, 200, 16000, seed=2), atol=1e-4)


def test_errors_name_file_and_line(vctk_092, tmp_path):
    with pytest.raises(DataDirError, match="neither wav48_silence_trimmed/"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "speaker-info.txt").write_text(INFO)
        prepare_vctk(str(tmp_path / "empty"), str(tmp_path / "data"), url_base=None)
    bad = tmp_path / "bad"
    shutil.copytree(vctk_092, bad, symlinks=True)
    (bad / "speaker-info.txt").write_text(INFO.replace("p227  22  M", "p227  22  X"))
    with pytest.raises(DataDirError, match=r"bad/speaker-info.txt:4: expected 'ID AGE GENDER"):
        prepare_vctk(str(bad), str(tmp_path / "data"), url_base=None)
    # paper-format protocol files naming a speaker / an utterance the tree does not have
    proto = tmp_path / "proto" / "VCTK-Corpus"
    (proto / "speakers").mkdir(parents=True)
    (proto / "trials").mkdir()
    names = list(SPEAKERS)
    for name, spks in (("train", names[:8]), ("valid", names[8:10]), ("test", names[10:] + ["p999"])):
        (proto / "speakers" / f"speaker-{name}.csv").write_text("ID,GENDER\n" + "".join(f"{s},F\n" for s in spks))
    for name in ("valid", "test"):
        s = names[8] if name == "valid" else names[10]
        (proto / "trials" / f"trials-{name}.csv").write_text(
            f"LABEL,SAMPLE1,SAMPLE2\n1,{s}/{s}_025.wav,{s}/{s}_026.wav\n1,{s}/{s}_025.wav,{s}/{s}_099.wav\n")
    with pytest.raises(DataDirError, match=r"speaker-test.csv:4: test speaker 'p999' has no audio under"):
        prepare_vctk(str(vctk_092), str(tmp_path / "data"), protocol_dir=str(tmp_path / "proto"))
    (proto / "speakers" / "speaker-test.csv").write_text(f"ID\n{names[10]}\n{names[11]}\n")
    with pytest.raises(DataDirError, match=r"trials-valid.csv:3: utterance 'p233_099' of the trial list is not in"):
        prepare_vctk(str(vctk_092), str(tmp_path / "data"), protocol_dir=str(tmp_path / "proto"))
    # the entry point prints the one-line error and exits 1
    r = subprocess.run([sys.executable, "-m", "upmp.bin.prepare_vctk", "--root", str(vctk_092), "--out",
                        str(tmp_path / "data"), "--protocol_dir", str(tmp_path / "proto")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("prepare_vctk.py: error: ")
    assert "trials-valid.csv:3:" in r.stderr and "Traceback" not in r.stderr


@needs_protocols
def test_paper_protocol_on_a_tree_of_the_papers_names(tmp_path, caplog):
    """A tree holding every utterance of the paper's trial lists (one sox-made flac, hard-linked) and one
    utterance per training speaker: the real lists convert completely, with the paper's counts."""
    src = PROTOCOLS / "VCTK-Corpus"
    utts = set()
    for name in ("valid", "test"):
        with open(src / "trials" / f"trials-{name}.csv", newline="") as f:
            for row in list(csv.reader(f))[1:]:
                utts.update(Path(p).stem for p in row[1:3])
    train_speakers = [line.split(",")[0] for line in (src / "speakers/speaker-train.csv").read_text().splitlines()[1:]]
    utts.update(f"{s}_025" for s in train_speakers)
    root = tmp_path / "VCTK-Corpus-0.92"
    one = sox_flac(tmp_path / "one.flac", 0.1, 300, 48000)
    for utt in utts:
        d = root / "wav48_silence_trimmed" / utt.rsplit("_", 1)[0]
        d.mkdir(parents=True, exist_ok=True)
        os.link(one, d / f"{utt}_mic1.flac")
    shutil.copy(src / "speakers" / "speaker-info.txt", root / "speaker-info.txt")
    with caplog.at_level(logging.INFO):
        out = prepare_vctk(str(root), str(tmp_path / "data"), protocol_dir=str(PROTOCOLS))
    assert "protocol source: local directory" in caplog.text
    counts = {"valid": (16040, 8010), "test": (16072, 8010)}
    for name in ("train", "valid", "test"):
        d = DataDir.load(out[name])
        listed = [line.split(",")[0] for line in (src / f"speakers/speaker-{name}.csv").read_text().splitlines()[1:]]
        assert sorted(set(d.utt2spk.values())) == sorted(listed) and len(listed) == {"train": 72}.get(name, 18)
        if name == "train":
            continue
        trials = read_kaldi_trials(str(out[name] / "trials"))
        assert (len(trials), sum(t for *_, t in trials)) == counts[name]
        assert {u for a, b, _ in trials for u in (a, b)} == set(d.utts)   # every trial utterance is an id
