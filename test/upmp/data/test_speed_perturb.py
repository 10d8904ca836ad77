"""Speed perturbation (upmp/data/speed_perturb.py, upmp.bin.perturb_speed): every perturbed entry of a
synthetic TTS corpus is decoded through its sox pipe and checked against a resampled original."""
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from helpers import bash_env, tone
from upmp.data.audio import load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError, Segment, validate_data_dir
from upmp.data.speed_perturb import perturb_speed, speed_entry
from upmp.recipes.voxceleb import prepare_voxceleb1

RESAMPLE = {0.9: (10, 9), 1.1: (10, 11)}  # speed f = resample by 1/f (pitch and tempo together)


def similar(a, b):
    n = min(len(a), len(b))
    return np.corrcoef(a[:n], b[:n])[0, 1]


def test_synthetic_corpus(tmp_path, small_corpus):
    src = prepare_voxceleb1(str(small_corpus), str(tmp_path / "data"))["voxceleb1_dev"]
    dest = tmp_path / "data" / "voxceleb1_dev_sp"
    r = subprocess.run([sys.executable, "-m", "upmp.bin.perturb_speed",
                        str(src), str(dest)], env=bash_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    validate_data_dir(dest)
    orig, sp = DataDir.load(src), DataDir.load(dest)
    assert len(sp.utts) == 3 * len(orig.utts) and len(sp.spk2utt) == 3 * len(orig.spk2utt)
    for utt in orig.utts:
        x = load_audio(orig.wav_scp[utt])
        assert sp.wav_scp[utt] == orig.wav_scp[utt] and sp.utt2spk[utt] == orig.utt2spk[utt]
        for f, (up, down) in RESAMPLE.items():
            key = f"sp{f:g}-{utt}"
            assert sp.utt2spk[key] == f"sp{f:g}-{orig.utt2spk[utt]}"
            assert sp.wav_scp[key] == f"sox -V1 {orig.wav_scp[utt]} -t wav - speed {f:g} rate 16000 |"
            y = load_audio(sp.wav_scp[key])
            assert abs(len(y) - len(x) / f) <= 1
            assert abs(sp.utt2dur[key] - len(x) / f / 16000) < 1e-3
            assert similar(y, resample_poly(x, up, down)) > 0.99  # pitch moved too: not a tempo change


def test_segments_and_pipes(tmp_path):
    x = tone(3.0, 220.0, seed=3)
    wav = tmp_path / "reco.wav"
    soundfile.write(wav, x, 16000, subtype="PCM_16")
    m4a = tmp_path / "reco b.m4a"  # a space: the pipe quotes the path
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    ffmpeg = f"ffmpeg -nostdin -v 8 -i '{m4a}' -f wav -ar 16000 -ac 1 -acodec pcm_s16le - |"
    data = DataDir(wav_scp={"spkA-r1": str(wav), "spkB-r2": ffmpeg},
                   utt2spk={"spkA-r1-u1": "spkA", "spkA-r1-u2": "spkA", "spkB-r2-u1": "spkB"},
                   segments={"spkA-r1-u1": Segment("spkA-r1", 0.5, 1.5), "spkA-r1-u2": Segment("spkA-r1", 2.0, -1),
                             "spkB-r2-u1": Segment("spkB-r2", 0.25, 2.75)},
                   utt2dur={"spkA-r1-u1": 1.0, "spkA-r1-u2": 1.0, "spkB-r2-u1": 2.5})
    data.write(tmp_path / "in")
    validate_data_dir(tmp_path / "in")
    sp = perturb_speed(DataDir.load(tmp_path / "in"), [1.1, 1.0])
    sp.write(tmp_path / "out")
    validate_data_dir(tmp_path / "out")
    sp = DataDir.load(tmp_path / "out")
    assert sp.segments["sp1.1-spkA-r1-u1"] == Segment("sp1.1-spkA-r1", 0.455, 1.364)
    assert sp.segments["sp1.1-spkA-r1-u2"].end == -1 and sp.utt2dur["sp1.1-spkB-r2-u1"] == pytest.approx(2.5 / 1.1, abs=1e-3)
    assert sp.wav_scp["sp1.1-spkB-r2"] == ffmpeg + " sox -V1 -t wav - -t wav - speed 1.1 rate 16000 |"
    fast = resample_poly(x, 10, 11)
    for utt in ("sp1.1-spkA-r1-u1", "sp1.1-spkA-r1-u2", "sp1.1-spkB-r2-u1"):
        entry, seg = sp.wav_entry(utt)
        y = load_audio(entry, seg)
        end = len(fast) if seg.end == -1 else int(round(seg.end * 16000))
        assert abs(len(y) - (end - int(round(seg.start * 16000)))) <= 1
        assert similar(y, fast[int(round(seg.start * 16000)):]) > 0.98


def test_errors(tmp_path, capsys):
    from upmp.bin.common import run_main
    from upmp.bin.perturb_speed import main
    data = DataDir({"a-1": "feats.ark:12", "a-2": "/x.wav"}, {"a-1": "a", "a-2": "a"})
    data.write(tmp_path / "ark")
    with pytest.raises(DataDirError, match=r"ark/wav.scp:1: a-1: cannot speed-perturb an ark entry"):
        perturb_speed(DataDir.load(tmp_path / "ark"), [0.9, 1.0], str(tmp_path / "ark" / "wav.scp"))
    with pytest.raises(DataDirError, match="distinct and positive"):
        perturb_speed(data, [0.0, 1.0])
    with pytest.raises(SystemExit):
        run_main(main, ["--factors", "0.9 1.0", str(tmp_path / "ark"), str(tmp_path / "sp")])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "wav.scp:1: a-1: cannot speed-perturb" in err and not (tmp_path / "sp").exists()
    with pytest.raises(SystemExit):
        run_main(main, [str(tmp_path / "ark"), str(tmp_path / "ark")])
    assert "must differ from the input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(main, ["--factors", "0.9 fast", str(tmp_path / "ark"), str(tmp_path / "sp")])
    assert "--factors: expected numbers" in capsys.readouterr().err
    assert speed_entry("/a b/c.wav", 0.9) == "sox -V1 '/a b/c.wav' -t wav - speed 0.9 rate 16000 |"


def test_spk2gender_is_carried_to_the_copies(tmp_path):
    from upmp.data.speed_perturb import perturb_speed_dir
    DataDir({"a-1": "/a1.wav", "b-1": "/b1.wav", "b-2": "/b2.wav"}, {"a-1": "a", "b-1": "b", "b-2": "b"},
            spk2gender={"a": "f", "b": "m"}).write(tmp_path / "in")
    perturb_speed_dir(str(tmp_path / "in"), str(tmp_path / "out"), [0.9, 1.0, 1.1])
    validate_data_dir(tmp_path / "out")
    assert (tmp_path / "out" / "spk2gender").read_text() == \
        "a f\nb m\nsp0.9-a f\nsp0.9-b m\nsp1.1-a f\nsp1.1-b m\n"
