"""Importing data dirs prepared by Kaldi, ESPnet and WeSpeaker (upmp.data.import_dir).

fakes.data_dir_forms.make_forms writes ONE synthetic set of utterances (VoxCeleb layout, 4 speakers) as a data
dir in every form users bring; test/recipes/test_import.py runs the recipe on them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import soundfile

from fakes.data_dir_forms import SPEAKERS, canonical_trials, canonical_utts, make_forms, spk_of, tree_hash, write_lines
from helpers import tone
from upmp.data.audio import load_audio
from upmp.data.import_dir import import_data_dir
from upmp.data.kaldi_dir import DataDir, DataDirError, read_table, validate_data_dir
from upmp.data.trials import read_kaldi_trials


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return root, make_forms(root)


def test_every_form_imports_with_the_same_audio_ids_and_trials(forms, caplog):
    root, all_forms = forms
    before = tree_hash(root / "their")
    data = root / "data"
    reference = {c: load_audio(str(root / "corpus" / "wav" / f"{c}.wav")) for c in canonical_utts()}
    names = []
    with caplog.at_level("INFO"):
        for form_name, form in all_forms.items():
            result = import_data_dir(form.src, data, form.trials, require_trials=True)
            names.append(result.name)
            d = data / result.name
            validate_data_dir(d)
            loaded = DataDir.load(d)
            to_ours = {v: k for k, v in read_table(d / "utt_map").items()} if (d / "utt_map").is_file() else {}
            ours = {c: to_ours.get(i, i) for c, i in form.ids.items()}
            assert sorted(loaded.utts) == sorted(ours.values()), form_name
            assert result.num_utts == len(ours) and result.num_speakers == SPEAKERS
            assert len(result.warnings) == (3 if form_name == "unsorted" else 0), result.warnings
            for c, utt in ours.items():
                assert loaded.utt2spk[utt] == spk_of(c)
                x = load_audio(*loaded.wav_entry(utt), name=utt)
                if form.lossless:
                    assert np.array_equal(x, reference[c]), (form_name, c)
                else:
                    assert len(x) == len(reference[c]), (form_name, c)
            expected = [(ours[a], ours[b], t) for a, b, t in canonical_trials()]
            assert read_kaldi_trials(str(d / "trials")) == expected, form_name
            assert result.sample_rate == (8000 if form_name == "rate8k" else 16000)
    assert names == ["vox1"] + [f"vox1_{n}" for n in range(2, len(all_forms) + 1)]  # no clobbering
    assert tree_hash(root / "their") == before
    # utt2num_samples (ESPnet) and utt2dur (Kaldi) -> utt2dur
    dur = read_table(data / names[list(all_forms).index("espnet_ark")] / "utt2dur")
    assert float(dur["id00001/vid1/00001"]) == pytest.approx(0.8)
    assert (data / names[list(all_forms).index("kaldi_ffmpeg")] / "utt2dur").is_file()
    log = caplog.text
    assert "unsorted/data/vox1/wav.scp: not sorted (LC_ALL=C); sorted in our copy" in log
    assert "unsorted/data/vox1/utt2spk: utterance ids do not sort by speaker" in log
    assert "rate8k/data/vox1: audio is 8000 Hz; it is resampled to 16000 Hz at extraction" in log
    assert log.count("resampled to") == 1
    assert f"kaldi_ffmpeg/data/vox1: relative audio paths resolve against {root / 'their' / 'kaldi_ffmpeg'}" in log
    # ids with / stay as they are; the renamed ids map back to the user's
    assert (data / names[list(all_forms).index("wespeaker")] / "wav.scp").read_text().startswith(
        "id00001/vid1/00001.wav ")
    assert read_table(data / names[list(all_forms).index("unsorted")] / "utt_map") == {
        f"{spk_of(c)}-{u}": u for c, u in all_forms["unsorted"].ids.items()}


def test_reimport_skips_until_the_source_changes(tmp_path, forms):
    _, all_forms = forms
    src, trials = all_forms["kaldi_sox"].src, all_forms["kaldi_sox"].trials   # no list of its own
    first = import_data_dir(src, tmp_path)
    assert not first.skipped and first.name == "vox1" and not (tmp_path / "vox1" / "trials").exists()
    stamp = (tmp_path / "vox1" / "import.json").stat().st_mtime_ns
    assert import_data_dir(src, tmp_path).skipped
    assert (tmp_path / "vox1" / "import.json").stat().st_mtime_ns == stamp
    # a trial list given later is converted; importing again without asking for one keeps it
    with_trials = import_data_dir(src, tmp_path, trials)
    assert not with_trials.skipped and with_trials.num_trials == len(canonical_trials())
    assert import_data_dir(src, tmp_path).skipped and (tmp_path / "vox1" / "trials").is_file()
    (src / "utt2spk").touch()
    assert not import_data_dir(src, tmp_path).skipped
    other = import_data_dir(all_forms["kaldi_wav"].src, tmp_path)
    assert other.name == "vox1_2" and import_data_dir(src, tmp_path).name == "vox1"
    # a set we prepared ourselves is never overwritten; one of ours given as a path is used as is
    ours = tmp_path / "mine" / "data"
    DataDir.load(tmp_path / "vox1").write(ours / "vox1")
    assert import_data_dir(src, ours).name == "vox1_2"
    assert import_data_dir(ours / "vox1", ours).name == "vox1"
    assert json.loads((tmp_path / "vox1" / "import.json").read_text())["source"] == str(src)


def test_m4a_pipe_loads(tmp_path):
    x = tone(1.0, 440)
    soundfile.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-v", "8", "-i", str(tmp_path / "a.wav"), "-c:a", "aac", str(tmp_path / "a.m4a")],
                   check=True)
    src = tmp_path / "their"
    write_lines(src / "wav.scp", [f"id1-v-00001 ffmpeg -v 8 -i {tmp_path}/a.m4a -f wav -acodec pcm_s16le - |"])
    write_lines(src / "utt2spk", ["id1-v-00001 id1"])
    d = tmp_path / "data" / import_data_dir(src, tmp_path / "data").name
    y = load_audio(*DataDir.load(d).wav_entry("id1-v-00001"))
    assert abs(len(y) - len(x)) < 2048                      # AAC priming / padding only
    n = min(len(x), len(y))
    lag = int(np.argmax(np.correlate(y[:n], x[:4000], "valid")[:2048]))
    assert np.corrcoef(x[:n - lag], y[lag:n])[0, 1] > 0.99  # lossy, but the same audio


def test_44k_audio_is_probed_and_resampled(tmp_path, caplog):
    soundfile.write(tmp_path / "a.wav", tone(0.5, 440, rate=44100), 44100, subtype="PCM_16")
    src = tmp_path / "their"
    write_lines(src / "wav.scp", [f"s1-a {tmp_path}/a.wav"])
    write_lines(src / "utt2spk", ["s1-a s1"])
    with caplog.at_level("INFO"):
        result = import_data_dir(src, tmp_path / "data")
    assert result.sample_rate == 44100 and "audio is 44100 Hz; it is resampled to 16000 Hz" in caplog.text
    assert len(load_audio(*DataDir.load(tmp_path / "data" / result.name).wav_entry("s1-a"))) == 8000


def broken(tmp_path: Path, files: Dict[str, str]) -> Path:
    d = tmp_path / "their"
    d.mkdir(exist_ok=True)
    soundfile.write(tmp_path / "a.wav", tone(0.5, 300), 16000, subtype="PCM_16")
    base = {"wav.scp": f"s1-a {tmp_path}/a.wav\ns1-b {tmp_path}/a.wav\n", "utt2spk": "s1-a s1\ns1-b s1\n"}
    base.update(files)
    for name, text in base.items():
        if text is not None:
            (d / name).write_text(text)
    return d


@pytest.mark.parametrize("files, trials, message", [
    ({"wav.scp": "s1-a /nonexistent/a.wav\ns1-b /nonexistent/b.wav\n"}, None,
     r"their/wav.scp:1: audio file '/nonexistent/a.wav' not found"),
    ({"wav.scp": "s1-a nowhere/a.wav\ns1-b nowhere/b.wav\n"}, None,
     r"their/wav.scp:1: audio file 'nowhere/a.wav' not found under .*their or any of its parent dirs"),
    ({"wav.scp": "s1-a a.wav\ns1-b b.wav\n"}, None, r"their/wav.scp:2: audio file 'b.wav' not found under"),
    ({"wav.scp": "s1-a sox missing.flac -t wav - |\ns1-b sox a.wav -t wav - |\n"}, None,
     r"wav.scp:1: audio file 'missing.flac' not found"),
    ({"utt2spk": "s1-a s1\ns1-b s1\ns1-c s1\n"}, None,
     r"their/utt2spk:3: utterance 's1-c' is not in wav.scp \(1 utterance\(s\) missing\)"),
    ({"utt2spk": "s1-a s1\n"}, None, r"their/wav.scp:2: utterance 's1-b' has no speaker in utt2spk"),
    ({"spk2utt": "s1 s1-a\ns2 s1-b\n"}, None, r"their/utt2spk:2: utterance 's1-b' of speaker 's1' is under 's2'"),
    ({"utt2spk": None, "spk2utt": "s1 s1-a s1-b\ns2 s1-a\n"}, None,
     r"their/spk2utt:2: utterance 's1-a' listed under two speakers"),
    ({"utt2spk": None}, None, r"their/utt2spk: missing \(and no spk2utt"),
    ({"utt2spk": "s1-a s1\ns1-a s1\n"}, None, r"their/utt2spk:2: duplicate key 's1-a'"),
    ({"utt2dur": "s1-a 0.5\n"}, None, r"their/utt2spk:2: utterance 's1-b' is not in utt2dur"),
    ({"segments": "s1-a r1 0 1\ns1-b r2 0 1\n"}, None, r"their/segments:1: recording 'r1' is not in wav.scp"),
    ({"trials": "s1-a s1-x target\n"}, "own", r"their/trials:1: utterance 's1-x' is not in the data dir"),
    ({}, "veri.txt", r"veri.txt:2: utterance 's1/x/00009.wav' is not in the data dir \(nor is 's1/x/00009' or "
                     r"'00009' or 's1-x-00009'\)"),
    ({"trial.scp": "s1-a*s1-b a.wav\n"}, "their/trial.scp", r"trial.scp:1: this looks like ESPnet's trial.scp"),
    ({}, "own", r"their: no trial list \(trials or trial_label\); give one with --trials"),
    ({"trials/vox1_O.kaldi": "s1-a s1-b target\n"}, "own", r"their/trials is a directory of lists"),
    ({"wav.scp": "s1-a {d}/text.wav\ns1-b {d}/a.wav\n"}, None,
     r"their/wav.scp:1: cannot read the sample rate: cannot read audio file"),
])
def test_errors_name_file_and_line(tmp_path, files, trials, message):
    """trials: a list to pass, "own" (the dir's own list, required) or None (none needed)."""
    files = {k: v.format(d=tmp_path) if v else v for k, v in files.items()}
    if any("/" in k for k in files):
        (tmp_path / "their" / "trials").mkdir(parents=True)
    src = broken(tmp_path, files)
    (tmp_path / "text.wav").write_text("not audio\n")
    (tmp_path / "veri.txt").write_text("1 s1-a.wav s1-b.wav\n0 s1-a.wav s1/x/00009.wav\n")
    before = tree_hash(src)
    with pytest.raises(DataDirError, match=message):
        import_data_dir(src, tmp_path / "data", tmp_path / trials if trials not in (None, "own") else None,
                        require_trials=trials is not None)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing half-written
    assert tree_hash(src) == before


def test_a_data_dir_of_ours_takes_a_trial_list(tmp_path):
    """data/<set> given as a path is used as it is, but --trials are converted into its trials (rewritten
    only when they change: stage 4 compares mtimes), and a required list found nowhere is an error."""
    data, utts = tmp_path / "data", ["id10001-vid-00001", "id10001-vid-00002", "id10002-vid-00001"]
    DataDir({u: f"/{u}.wav" for u in utts}, {u: u.split("-")[0] for u in utts}).write(data / "vox1_o")
    with pytest.raises(DataDirError, match=r"data/vox1_o: no trials file .*give a trial list with --trials"):
        import_data_dir(data / "vox1_o", data, require_trials=True)
    assert import_data_dir(data / "vox1_o", data).skipped   # no list needed
    mine = write_lines(tmp_path / "my.kaldi", ["id10001/vid/00001.wav id10001/vid/00002.wav target",
                                               "id10001/vid/00002.wav id10002/vid/00001.wav nontarget"])
    result = import_data_dir(data / "vox1_o", data, mine, require_trials=True)
    trials = data / "vox1_o" / "trials"
    assert (result.name, result.dst, result.num_trials) == ("vox1_o", data / "vox1_o", 2)
    assert trials.read_text() == "id10001-vid-00001 id10001-vid-00002 target\nid10001-vid-00002 id10002-vid-00001 nontarget\n"
    os.utime(trials, ns=(10**9, 10**9))
    import_data_dir(data / "vox1_o", data, mine, require_trials=True)
    assert trials.stat().st_mtime_ns == 10**9   # unchanged: not rewritten
    assert import_data_dir(data / "vox1_o", data, require_trials=True).skipped   # its own trials now
    assert sorted(p.name for p in (data / "vox1_o").iterdir()) == ["spk2utt", "trials", "utt2spk", "wav.scp"]


def test_cli_prints_the_name_or_a_one_line_error(tmp_path, forms):
    _, all_forms = forms
    run = [sys.executable, "-m", "upmp.bin.import_data_dir", "--data_root", str(tmp_path / "data")]
    r = subprocess.run(run + ["--src", str(all_forms["wespeaker"].src), "--trials", str(all_forms["wespeaker"].trials)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "vox1\n", r.stderr
    assert len(read_kaldi_trials(str(tmp_path / "data" / "vox1" / "trials"))) == len(canonical_trials())
    r = subprocess.run(run + ["--src", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].endswith("missing: not a directory")


def test_map_score_ids_back_to_the_source_ids(tmp_path, capsys):
    from upmp.bin.common import run_main
    from upmp.bin.map_score_ids import main
    (tmp_path / "utt_map").write_text("a-x1 x1\nb-x2 x2\n")
    (tmp_path / "scores").write_text("a-x1 b-x2 0.5\nb-x2 a-x1 -1.25\n")
    main(["--utt_map", str(tmp_path / "utt_map"), "--scores", str(tmp_path / "scores"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out").read_text() == "x1 x2 0.5\nx2 x1 -1.25\n"
    (tmp_path / "scores").write_text("a-x1 b-x2 0.5\nc-x3 a-x1 1\n")
    with pytest.raises(SystemExit):
        run_main(main, ["--utt_map", str(tmp_path / "utt_map"), "--scores", str(tmp_path / "scores"),
                        "--out", str(tmp_path / "o2")])
    assert "scores:2: utterance 'c-x3' is not in" in capsys.readouterr().err and not (tmp_path / "o2").exists()
