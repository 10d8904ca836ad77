"""Online augmentation (upmp/data/augment.py) on tiny MUSAN and RIRS_NOISES trees in their layouts."""
import numpy as np
import pytest
import soundfile
from scipy.signal import correlate

from helpers import tone
from upmp.config import ConfigError
from upmp.data.augment import Augmenter
from upmp.train.schema import AugmentConf, check_train_config

RATE = 16000


def noise(seconds, seed):
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("aug")
    musan, rirs = base / "musan", base / "RIRS_NOISES"
    files = {"noise/free-sound/noise-free-sound-0000.wav": noise(0.3, 1),   # shorter than the speech: wraps
             "noise/sound-bible/noise-sound-bible-0001.wav": noise(0.3, 2),
             "music/fma/music-fma-0000.wav": tone(2.0, 523.0, seed=3),
             "music/rfm/music-rfm-0001.wav": tone(1.5, 659.0, seed=4)}
    files.update({f"speech/librivox/speech-librivox-{i:04d}.wav": tone(1.2 + 0.1 * i, 120 + 15 * i, seed=10 + i)
                  for i in range(8)})
    for rel, x in files.items():
        (musan / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(musan / rel, x, RATE, subtype="FLOAT")
    impulse = np.zeros(800, dtype=np.float32)
    impulse[37] = 0.5  # direct path after 37 samples, half amplitude
    decay = np.random.default_rng(5).standard_normal(4000) * np.exp(-np.arange(4000) / 600.0)
    decay[:20] = 0.0
    decay[20] = 10.0  # the direct path
    for rel, x in (("smallroom/Room001/Room001-00001.wav", impulse), ("mediumroom/Room002/Room002-00001.wav", decay)):
        (rirs / "simulated_rirs" / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(rirs / "simulated_rirs" / rel, x.astype(np.float32), RATE, subtype="FLOAT")
    for size, room in (("small", "Room001"), ("medium", "Room002")):
        (rirs / "simulated_rirs" / f"{size}room" / "rir_list").write_text(
            f"--rir-id {size}-{room}-00001 --room-id {size}-{room} "
            f"RIRS_NOISES/simulated_rirs/{size}room/{room}/{room}-00001.wav\n")
    real = rirs / "real_rirs_isotropic_noises"
    real.mkdir()
    two_channels = np.stack([impulse, decay[:800].astype(np.float32)], axis=1)  # channel 0: an impulse
    soundfile.write(real / "RVB2014_type1_rir_room1_near.wav", two_channels, RATE, subtype="FLOAT")
    soundfile.write(real / "RVB2014_type1_noise_room1_1.wav", noise(0.5, 9), RATE, subtype="FLOAT")  # not an RIR
    (real / "rir_list").write_text("--rir-id RVB2014_type1_rir_room1_near --room-id RVB2014_type1_rir_room1 "
                                   "RIRS_NOISES/real_rirs_isotropic_noises/RVB2014_type1_rir_room1_near.wav\n")
    return musan, rirs, files


def conf(musan="", rirs="", **kw):
    """train_conf.augment with these roots, prob 1 and the other keys at the schema's defaults."""
    return AugmentConf(musan_root=str(musan), rirs_root=str(rirs), **dict(dict(prob=1.0), **kw))


def snr_db(speech, mixture):
    residual = mixture.astype(np.float64) - speech
    return 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(residual ** 2))


@pytest.mark.parametrize("kind,snr", [("noise", 0.0), ("noise", 12.5), ("music", 7.0), ("babble", 17.0)])
def test_snr_of_mixture(roots, kind, snr):
    musan, rirs, _ = roots
    aug = Augmenter(conf(musan, rirs, kinds={kind: 1}, snr={"noise": [snr] * 2, "music": [snr] * 2,
                                                            "babble": [snr] * 2}))
    assert aug.kinds == [kind]
    speech = tone(1.0, 210.0, seed=0)
    for seed in range(4):
        out = aug(speech, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == speech.shape
        assert abs(snr_db(speech, out) - snr) < 0.1


def test_additive_noise_is_a_file_segment(roots):
    """The residual is a scaled segment of one MUSAN file: wrapped when the file is shorter
    than the utterance, a contiguous slice otherwise."""
    musan, _, files = roots
    speech = tone(1.0, 210.0, seed=0)
    for kind, snr in (("noise", 5.0), ("music", 9.0)):
        aug = Augmenter(conf(musan, kinds={kind: 1}, snr={"noise": [snr] * 2, "music": [snr] * 2, "babble": [1, 2]}))
        sources = [x.astype(np.float64) for rel, x in files.items() if rel.startswith(kind)]
        for seed in range(3):
            residual = aug(speech, np.random.default_rng(seed)).astype(np.float64) - speech
            residual /= np.sqrt(np.mean(residual ** 2))
            best = 0.0
            for x in sources:
                if len(x) < len(speech):  # circular: one period of the residual is a rotation of the file
                    period = residual[:len(x)]
                    assert np.allclose(residual[len(x):2 * len(x)], period, atol=1e-4)
                    c = np.fft.irfft(np.fft.rfft(period) * np.conj(np.fft.rfft(x)), len(x))
                    shift = int(np.argmax(c))
                    segment = np.roll(x, shift)
                    best = max(best, np.corrcoef(segment, period)[0, 1])
                else:
                    c = correlate(x, residual, mode="valid", method="fft")
                    start = int(np.argmax(c))
                    best = max(best, np.corrcoef(x[start:start + len(residual)], residual)[0, 1])
            assert best > 0.9999


def test_reverb_unit_impulse_returns_input(roots):
    musan, rirs, _ = roots
    aug = Augmenter(conf(rirs=rirs, kinds={"reverb": 1}))
    speech = noise(0.8, 7)  # white: its autocorrelation marks the lag
    outputs = {}
    for seed in range(12):
        out = aug(speech, np.random.default_rng(seed))
        outputs[np.allclose(out, speech, atol=1e-5)] = out
    assert set(outputs) == {True, False}  # both RIRs were drawn
    wet = outputs[False]
    # the decaying RIR: same power, no delay (the direct path stays at lag 0)
    assert abs(np.mean(wet.astype(np.float64) ** 2) / np.mean(speech.astype(np.float64) ** 2) - 1) < 1e-4
    lags = correlate(wet, speech, mode="full", method="fft")
    assert int(np.argmax(lags)) - (len(speech) - 1) == 0
    assert not np.allclose(wet, speech, atol=1e-2)


def test_rir_lists_and_channels(roots, tmp_path):
    _, rirs, _ = roots
    aug = Augmenter(conf(rirs=rirs, kinds={"reverb": 1}, rir_sets=["real_rirs_isotropic_noises"]))
    assert [p.name for p in aug.files["reverb"]] == ["RVB2014_type1_rir_room1_near.wav"]  # the noise is left out
    speech = noise(0.5, 3)
    assert np.allclose(aug(speech, np.random.default_rng(0)), speech, atol=1e-5)  # first channel only
    both = Augmenter(conf(rirs=rirs, kinds={"reverb": 1}, rir_sets=["simulated_rirs", "real_rirs_isotropic_noises"]))
    assert len(both.files["reverb"]) == 3
    bad = tmp_path / "RIRS_NOISES" / "simulated_rirs"
    bad.mkdir(parents=True)
    (bad / "rir_list").write_text("--rir-id a --room-id b RIRS_NOISES/simulated_rirs/missing.wav\n")
    with pytest.raises(ConfigError, match=r"simulated_rirs/rir_list:1: RIR file .*missing.wav' not found"):
        Augmenter(conf(rirs=tmp_path / "RIRS_NOISES", kinds={"reverb": 1}))


def test_deterministic_given_rng(roots):
    musan, rirs, _ = roots
    aug = Augmenter(conf(musan, rirs, prob=0.8))
    assert aug.kinds == ["noise", "music", "babble", "reverb"]
    speech = tone(1.1, 180.0, seed=2)
    first = [aug(speech, np.random.default_rng(s)) for s in range(20)]
    again = [aug(speech, np.random.default_rng(s)) for s in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    changed = [not np.array_equal(a, speech) for a in first]
    assert 8 <= sum(changed) < 20
    additive = Augmenter(conf(musan))  # (an RIR drawn twice gives the same output: no randomness in reverb)
    distinct = {additive(speech, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert len(distinct) == 20  # different seeds, different outputs
    assert aug(np.zeros(0, np.float32), np.random.default_rng(0)).shape == (0,)
    short = tone(0.05, 400.0)
    for s in range(10):
        out = aug(short, np.random.default_rng(s))
        assert out.shape == short.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_disabled_and_probability(roots):
    musan, rirs, _ = roots
    speech = tone(0.5, 250.0)
    nothing = Augmenter(conf())
    assert nothing.kinds == [] and np.array_equal(nothing(speech, np.random.default_rng(0)), speech)
    assert Augmenter(conf(musan, "", kinds={"noise": 1, "reverb": 1})).kinds == ["noise"]
    assert Augmenter(conf("", rirs, kinds={"noise": 1, "music": 0, "reverb": 2})).kinds == ["reverb"]
    never = Augmenter(conf(musan, rirs, prob=0.0))
    assert all(np.array_equal(never(speech, np.random.default_rng(s)), speech) for s in range(10))
    half = Augmenter(conf(musan, rirs, prob=0.5))
    rng = np.random.default_rng(0)
    changed = sum(not np.array_equal(half(speech, rng), speech) for _ in range(200))
    assert 70 <= changed <= 130


def test_errors(roots, tmp_path):
    musan, rirs, _ = roots
    with pytest.raises(ConfigError, match=r"unknown config key 'train_conf.augment.snr_db'"):  # the schema's keys
        check_train_config({"train_conf": {"augment": {"snr_db": 3}}})
    with pytest.raises(ConfigError, match=r"augment.rir_sets: expected a list such as \[simulated_rirs\], got \[\]"):
        Augmenter(conf(rir_sets=[]))
    (tmp_path / "musan" / "noise").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"musan/noise: no <subdir>/\*.wav files"):
        Augmenter(conf(tmp_path / "musan"))
    with pytest.raises(ConfigError, match=r"nowhere: no RIR wav files under simulated_rirs"):
        Augmenter(conf(rirs=tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"augment.snr.music: expected \[low, high\]"):
        Augmenter(conf(snr={"noise": [0, 15], "music": [15, 5], "babble": [13, 20]}))
    with pytest.raises(ConfigError, match=r"augment.babble_speakers: .* \(positive integers\)"):
        Augmenter(conf(babble_speakers=[0, 2]))
    with pytest.raises(ConfigError, match="augment.prob"):
        Augmenter(conf(prob=1.5))
    with pytest.raises(ConfigError, match="augment.kinds"):
        Augmenter(conf(kinds={"noise": 1, "speed": 1}))
    with pytest.raises(ValueError, match="1-D waveform"):
        Augmenter(conf(musan))(np.zeros((2, 100), np.float32), np.random.default_rng(0))
    bad = tmp_path / "bad"
    (bad / "noise" / "x").mkdir(parents=True)
    soundfile.write(bad / "noise" / "x" / "n.wav", noise(0.5, 0), 8000)
    with pytest.raises(ValueError, match=r"n.wav: sample rate 8000 Hz, expected 16000"):
        Augmenter(conf(bad, kinds={"noise": 1}))(tone(0.2, 100.0), np.random.default_rng(0))
