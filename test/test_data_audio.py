import numpy as np
import pytest
import soundfile

from conftest import tone
from upmp.data.audio import AudioError, load_audio
from upmp.data.kaldi_dir import Segment


def peak_hz(x, rate=16000):
    spec = np.abs(np.fft.rfft(x))
    return np.argmax(spec) * rate / len(x)


def test_plain_path(tmp_path):
    x = tone(1.0, 440)
    soundfile.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    y = load_audio(str(tmp_path / "a.wav"))
    np.testing.assert_allclose(y, x, atol=1e-7)


def test_pipe_and_flac_through_sox(tmp_path):
    x = tone(1.0, 440)
    soundfile.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    y = load_audio(f"sox {tmp_path}/a.flac -t wav - |")
    np.testing.assert_allclose(y, x, atol=1.0 / 32768 + 1e-6)


def test_resample_8k_and_48k_to_16k(tmp_path):
    for rate in (8000, 48000):
        soundfile.write(tmp_path / f"r{rate}.wav", tone(2.0, 1000, rate=rate), rate)
        y = load_audio(str(tmp_path / f"r{rate}.wav"))
        assert len(y) == 32000
        assert abs(peak_hz(y) - 1000) < 2


def test_stereo_to_mono(tmp_path):
    left, right = tone(0.5, 300), np.zeros(8000, dtype=np.float32)
    soundfile.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(str(tmp_path / "s.wav")), left / 2, atol=1e-7)


def test_segment_cut(tmp_path):
    x = tone(3.0, 300)
    soundfile.write(tmp_path / "r.wav", x, 16000, subtype="FLOAT")
    y = load_audio(str(tmp_path / "r.wav"), Segment("r", 1.0, 2.5))
    np.testing.assert_allclose(y, x[16000:40000], atol=1e-7)


def test_kaldi_wav_ark(tmp_path):
    import kaldiio
    pcm = (tone(0.5, 300) * 32767).astype(np.int16)
    kaldiio.save_ark(str(tmp_path / "w.ark"), {"u": (16000, pcm)}, scp=str(tmp_path / "w.scp"))
    entry = (tmp_path / "w.scp").read_text().split()[1]
    np.testing.assert_allclose(load_audio(entry), pcm / 32768.0, atol=1e-7)


def test_errors(tmp_path):
    with pytest.raises(AudioError, match="cannot read audio file"):
        load_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match=r"command failed \(exit 1\)"):
        load_audio("sh -c 'echo boom >&2; exit 1' |")
    with pytest.raises(AudioError, match="produced no audio"):
        load_audio("true |")
