import numpy as np
import pytest
import soundfile

from helpers import tone
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


def test_resample_equals_scipy_with_the_filter_designed_once():
    """resample() keeps one designed filter per up / down pair; the output is scipy's resample_poly
    bit for bit, for float32, float64 and integer samples (scipy matches the filter's dtype to floats)."""
    from scipy.signal import resample_poly
    from upmp.data import audio
    audio._resampling_filter.cache_clear()
    for dtype in (np.float32, np.float64, np.int16):
        x = (tone(0.5, 440, rate=44100) * 1000).astype(dtype)
        for rate in (8000, 23467, 44100):  # 23467: the mini corpus' formant-shifted TTS rates
            g = np.gcd(rate, 16000)
            expected = resample_poly(x[: rate // 2], 16000 // g, rate // g).astype(np.float32)
            assert np.array_equal(audio.resample(x[: rate // 2], rate, 16000), expected)
    assert audio._resampling_filter.cache_info().misses == 3  # one design per rate, reused across dtypes


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


def test_non_finite_truncated_and_short_audio(tmp_path):
    from upmp.data.audio import check_finite, load_utterance
    from upmp.data.kaldi_dir import DataDir, DataDirError
    check_finite(np.zeros(3, np.float32), "x")
    check_finite(np.arange(3), "ints are always finite")
    with pytest.raises(AudioError, match=r"^stack u1: 2 of 6 values are NaN or inf \(first at index 4\); fix it$"):
        check_finite(np.array([[0, 1, 2], [3, -np.inf, np.nan]]), "stack u1", "fix it")
    x = tone(1.0, 440)
    x[100] = np.nan
    soundfile.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"audio file '.*n.wav': 1 of 16000 values are NaN or inf \(first at index 100\)"):
        load_audio(str(tmp_path / "n.wav"))
    with pytest.raises(AudioError, match=r"the output of 'cat .*n.wav': 1 of 16000 values are NaN"):
        load_audio(f"cat {tmp_path}/n.wav |")
    load_audio(str(tmp_path / "n.wav"), Segment("r", 0.5, 1.0))  # the NaN lies outside the segment
    soundfile.write(tmp_path / "a.flac", tone(1.0, 440), 16000, subtype="PCM_16")
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(data[:len(data) // 2])
    with pytest.raises(AudioError, match=r"audio file '.*t.flac': cannot decode it .*: the file is truncated or corrupt"):
        load_audio(str(tmp_path / "t.flac"))
    soundfile.write(tmp_path / "s.wav", tone(0.02, 440), 16000, subtype="PCM_16")  # 320 samples
    d = DataDir({"u1": str(tmp_path / "s.wav")}, {"u1": "s"})
    assert len(load_utterance(d, "u1")) == 320  # no minimum asked for
    with pytest.raises(DataDirError, match=r"^wav.scp: utterance u1: audio file '.*s.wav': 320 samples \(20.0 ms\), "
                                           r"shorter than the 400 samples \(25 ms\) the upstream needs for one frame; "
                                           r"remove the utterance from the training data"):
        load_utterance(d, "u1", min_samples=400)
    assert len(load_utterance(d, "u1", min_samples=400, strict=False)) == 320  # test data: a warning


def crop_fixture_dir(tmp_path):
    """Utterances in every form the crop reader meets: 16-bit wav, float wav, flac, stereo, short
    ones that wrap, an 8 kHz file (resampled: decoded whole), a pipe and a Kaldi wav ark (whole),
    and a segments file over two recordings (ends inside, at -1 and past the end)."""
    import kaldiio
    from upmp.data.kaldi_dir import DataDir
    w = tmp_path / "w"
    w.mkdir()
    rng = np.random.default_rng(0)

    def sig(seconds, rate=16000):
        return (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    soundfile.write(w / "pcm.wav", sig(3.3), 16000, subtype="PCM_16")
    soundfile.write(w / "float.wav", sig(2.7), 16000, subtype="FLOAT")
    soundfile.write(w / "lossless.flac", sig(4.1), 16000, subtype="PCM_16")
    soundfile.write(w / "stereo.flac", np.stack([sig(2.2), sig(2.2)], 1), 16000, subtype="PCM_24")
    soundfile.write(w / "short.wav", sig(0.61), 16000, subtype="PCM_16")
    soundfile.write(w / "short.flac", sig(0.3), 16000, subtype="PCM_16")
    soundfile.write(w / "r8k.wav", sig(2.5, 8000), 8000, subtype="PCM_16")
    soundfile.write(w / "piped.flac", sig(2.9), 16000, subtype="PCM_16")
    kaldiio.save_ark(str(w / "a.ark"), {"x": (16000, (sig(2.4) * 8000).astype(np.int16))}, scp=str(w / "a.scp"))
    wav_scp = {"s1-pcm": str(w / "pcm.wav"), "s1-float": str(w / "float.wav"), "s2-flac": str(w / "lossless.flac"),
               "s2-stereo": str(w / "stereo.flac"), "s3-short": str(w / "short.wav"), "s3-shortflac": str(w / "short.flac"),
               "s4-r8k": str(w / "r8k.wav"), "s4-pipe": f"sox {w}/piped.flac -t wav - |",
               "s4-ark": (w / "a.scp").read_text().split()[1]}
    plain = tmp_path / "plain"
    DataDir(wav_scp, {u: u.split("-")[0] for u in wav_scp}).write(plain)
    soundfile.write(w / "reco1.flac", sig(9.0), 16000, subtype="PCM_16")
    soundfile.write(w / "reco2.wav", sig(5.0), 16000, subtype="PCM_16")
    seg = tmp_path / "seg"
    seg.mkdir()
    (seg / "wav.scp").write_text(f"reco1 {w}/reco1.flac\nreco2 {w}/reco2.wav\n")
    (seg / "segments").write_text("a1-0 reco1 0.00 3.21\na1-1 reco1 3.21 3.70\na2-0 reco1 5.505 -1\n"
                                  "b1-0 reco2 0.25 4.00\nb2-0 reco2 4.60 7.00\n")
    (seg / "utt2spk").write_text("a1-0 a1\na1-1 a1\na2-0 a2\nb1-0 b1\nb2-0 b2\n")
    (seg / "spk2utt").write_text("a1 a1-0 a1-1\na2 a2-0\nb1 b1-0\nb2 b2-0\n")
    return plain, seg


@pytest.mark.parametrize("crop", [16000 * 2, 4321])
def test_crop_only_decode_equals_whole_decode_crops(tmp_path, monkeypatch, crop):
    """read_utterance_crop = today's crop of the whole decode, bit for bit (same generators), and
    a seekable file at 16 kHz decodes no more than the crop."""
    from upmp.data.audio import load_utterance, read_utterance_crop
    from upmp.data.kaldi_dir import DataDir
    from upmp.data.crops import wrap_crop
    from upmp.train.data import crop_start
    read = []
    original = soundfile.SoundFile.read

    def counting_read(self, frames=-1, *a, **k):
        out = original(self, frames, *a, **k)
        read.append((self.name, len(out)))
        return out
    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    for d in crop_fixture_dir(tmp_path):
        data = DataDir.load(d)
        for utt in data.utts:
            whole = load_utterance(data, utt)
            for seed in range(3):
                expected = wrap_crop(whole, crop_start(np.random.default_rng([seed, utt.encode()[0]]), len(whole), crop), crop)
                del read[:]
                rng = np.random.default_rng([seed, utt.encode()[0]])
                got = read_utterance_crop(data, utt, crop, lambda n: crop_start(rng, n, crop))
                assert got.dtype == np.float32 and got.shape == (crop,)
                np.testing.assert_array_equal(got, expected, err_msg=f"{d.name} {utt}")
                entry = data.wav_entry(utt)[0]
                if entry.endswith((".wav", ".flac")) and "r8k" not in entry:
                    assert read == [(entry, min(crop, len(whole)))], (utt, read)  # the crop, or a short utt once
    assert len(load_utterance(DataDir.load(tmp_path / "seg"), "a2-0")) == 16000 * 9 - 88080  # to the end (-1)


def test_waveform_crops_decode_only_the_crop_with_the_same_batches(tmp_path):
    """Online batches with crop-only decoding equal those cut from the whole decode (preload),
    segments and wrap padding included."""
    import torch
    from upmp.train.data import WaveformCrops
    for d in crop_fixture_dir(tmp_path):
        for sampling in ("uniform", "speaker_balanced"):
            lazy = WaveformCrops(str(d), 3 * 16000, 8, seed=5, sampling=sampling)
            whole = WaveformCrops(str(d), 3 * 16000, 8, seed=5, sampling=sampling, preload=True)
            for step in (0, 1, 7):
                a, b = lazy.batch(step), whole.batch(step)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ffmpeg_entry_decodes_as_the_file_is_or_to_16k_mono(tmp_path):
    """One ffmpeg pipe for upmp-embed (the file's own rate and channels: load_audio converts them) and the
    VoxCeleb2 recipe (ffmpeg resamples to 16 kHz mono); the path is quoted for the shell."""
    from upmp.data.audio import ffmpeg_entry, read_wav_entry
    path = tmp_path / "a b.wav"
    soundfile.write(path, np.stack([tone(0.5, 300, 8000), tone(0.5, 500, 8000, seed=1)], axis=1), 8000,
                    subtype="PCM_16")
    as_is, converted = ffmpeg_entry(path), ffmpeg_entry(path, resample=True)
    assert as_is == f"ffmpeg -nostdin -v 8 -i '{path}' -f wav -acodec pcm_s16le - |"
    assert converted == f"ffmpeg -nostdin -v 8 -i '{path}' -f wav -ar 16000 -ac 1 -acodec pcm_s16le - |"
    samples, rate = read_wav_entry(as_is)
    assert rate == 8000 and samples.shape == (4000, 2)
    assert np.array_equal(samples, soundfile.read(path, dtype="float32")[0])   # PCM-16 through: bit for bit
    samples, rate = read_wav_entry(converted)
    assert rate == 16000 and samples.shape == (8000,)
