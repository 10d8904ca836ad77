"""Fault injection for audio (issue 12): a bad file in a small data dir, the real entry point run
as a subprocess; the outcome is exit status 1, one line naming the utterance, the file, the problem
and what to do, and no traceback. Test data that is merely short is a warning, not an error."""

import numpy as np
import pytest
import soundfile

from helpers import run_module, tone, write_data_dir
from upmp.data.audio import NON_FINITE_HINT

UTT = "spk1-utt1"


def faulty_dir(tmp_path, fault: str):
    """A 4-utterance data dir whose utterance UTT carries `fault`; returns (dir, path of UTT's file)."""
    d = write_data_dir(tmp_path / "data", {f"spk{s}-utt{u}": (f"spk{s}", 0.6, 200 + 60 * s + 9 * u)
                                           for s in range(2) for u in range(2)})
    path = d / "wav" / f"{UTT}.wav"
    x = tone(0.6, 300)
    if fault == "nan":
        x[1234], x[2000] = np.nan, np.inf
        soundfile.write(path, x, 16000, subtype="FLOAT")
    elif fault == "truncated":
        soundfile.write(path, x, 16000, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])  # the header still promises all 9,600 samples
    elif fault == "short":
        soundfile.write(path, tone(0.01, 300), 16000, subtype="PCM_16")  # 160 samples < 400
    return d, path


def extract(d, tiny_wavlm, tmp_path, *extra):
    return run_module("upmp.bin.extract_layers", "--data_dir", d, "--out_prefix", tmp_path / "dump" / "layers.1",
                      "--upstream", "wavlm_local", "--upstream_ckpt", tiny_wavlm, *extra)


def error_line(r, program: str = "extract_layers.py") -> str:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), r.stderr  # not glued to the bar
    return lines[0]


@pytest.mark.parametrize("fault, problem, todo", [
    ("nan", r"2 of 9600 values are NaN or inf \(first at index 1234\)",
     "re-encode or replace the file, or remove the utterance from the data dir"),
    ("truncated", "the WAV header promises 9600 samples but the file holds 4789",
     "the file is truncated or corrupt; copy it again from the corpus, or remove the utterance"),
    ("short", r"160 samples \(10.0 ms\), shorter than the 400 samples \(25 ms\) the upstream needs",
     "remove the utterance from the training data"),
])
def test_extract_layers_refuses_bad_training_audio(tmp_path, tiny_wavlm, fault, problem, todo):
    import re
    d, path = faulty_dir(tmp_path, fault)
    line = error_line(extract(d, tiny_wavlm, tmp_path, "--purpose", "train"))
    assert re.search(rf"{re.escape(str(d))}/wav.scp:\d+: utterance {UTT}: ", line) and str(path) in line, line
    assert re.search(problem, line) and todo in line, line


def test_short_test_audio_is_a_warning(tmp_path, tiny_wavlm):
    d, path = faulty_dir(tmp_path, "short")
    r = extract(d, tiny_wavlm, tmp_path)  # --purpose test (the default)
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warning) == 1 and str(path) in warning[0] and "160 samples" in warning[0], r.stderr
    assert len((tmp_path / "dump" / "layers.1.scp").read_text().splitlines()) == 4


@pytest.mark.parametrize("fault", ["nan", "truncated", "short"])
def test_online_training_crops_refuse_bad_audio(tmp_path, fault):
    """The online-mode reader (crop-only decode) refuses the same files, naming them."""
    from upmp.data.kaldi_dir import DataDirError
    from upmp.train.data import WaveformCrops
    d, path = faulty_dir(tmp_path, fault)
    for preload in (False, True):
        with pytest.raises(DataDirError, match=rf"utterance {UTT}: audio file '{path}'"):
            crops = WaveformCrops(str(d), 4000, 16, seed=0, preload=preload)
            for step in range(10):  # 16 draws of 4 utterances per step: UTT comes up
                crops.batch(step)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_online_training_stops_at_a_nan_file(tmp_path, tiny_wavlm, num_workers):
    """python -m upmp.bin.train --train_data_dir with a NaN file: one line naming it, exit 1,
    no model.pt (before, training reached `loss nan` and wrote a NaN model)."""
    import yaml
    from helpers import TRAIN_CONFIG
    d, path = faulty_dir(tmp_path, "nan")
    cfg = dict(TRAIN_CONFIG, train_conf=dict(TRAIN_CONFIG["train_conf"], steps=6, batch_size=8, crop_seconds=0.3,
                                             preload=False, num_workers=num_workers))
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(cfg))
    r = run_module("upmp.bin.train", "--config", tmp_path / "conf.yaml", "--train_data_dir", d, "--exp_dir",
                   tmp_path / "exp", "--upstream", "wavlm_local", "--upstream_ckpt", tiny_wavlm)
    line = error_line(r, "train.py")
    assert f"{d}/wav.scp: utterance {UTT}: audio file '{path}': " in line
    # the crop (0.3 s = 4,800 samples) holds the NaN, the inf, or both
    assert " of 4800 values are NaN or inf (first at index " in line and NON_FINITE_HINT in line
    assert not (tmp_path / "exp" / "model.pt").exists()
