"""Online waveform augmentation for training: MUSAN noise / music / babble and RIR reverberation.

Layouts read (files indexed once at start, sorted, so a seed picks the same files everywhere):
    <musan_root>/{noise,music,speech}/<subdir>/*.wav           16 kHz (speech is the babble source)
    <rirs_root>/simulated_rirs/{smallroom,mediumroom,largeroom}/RoomN/Room*-*.wav   16 kHz
    <rirs_root>/real_rirs_isotropic_noises/*.wav               (with rir_sets: [..., real_rirs_isotropic_noises])
    <rirs_root>/<set>/[...]/rir_list   Kaldi's lists (`--rir-id X --room-id Y RIRS_NOISES/<set>/.../x.wav`): when a
                                       set has them, only the files they name are RIRs (real_rirs_isotropic_noises
                                       also holds noise recordings); otherwise every wav below the set

Config: `train_conf.augment`, whose keys, defaults and types are upmp.train.schema.AugmentConf's
(musan_root, rirs_root: empty disables; prob; kinds: relative weights of the one kind applied; snr:
dB ranges drawn uniformly; babble_speakers: speech files summed for babble; rir_sets); `check_conf`
checks the values the schema's types do not say (the kinds named, the ranges, a set given).

Additive kinds scale the noise by power so that 10 log10(P_speech / P_noise) is the drawn SNR
(powers over the whole utterance); segments start at a random offset and wrap around when the
file is shorter than the utterance. Reverb convolves with an RIR (scipy fftconvolve), keeps the
samples from the RIR's direct-path peak on (no delay) and rescales to the input's power; a
multichannel RIR contributes its first channel (as Kaldi's wav-reverberate).
The output is not clipped.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile
from scipy.signal import fftconvolve

from upmp.errors import ConfigError
from upmp.data.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

KINDS = ("noise", "music", "babble", "reverb")
MUSAN_DIRS = {"noise": "noise", "music": "music", "babble": "speech"}


def _range(value, where: str, integer: bool = False) -> tuple:
    """[low, high] from the config, checked (positive integers when `integer`)."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] <= value[1])
    if ok and integer:
        ok = all(float(v).is_integer() and v >= 1 for v in value)
    if not ok:
        raise ConfigError(f"augment.{where}: expected [low, high] with low <= high"
                          f"{' (positive integers)' if integer else ''}, got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def read_segment(path: Path, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of a 16 kHz file from a random offset, wrapping around when it is shorter."""
    with soundfile.SoundFile(str(path)) as f:
        if f.samplerate != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {f.samplerate} Hz, expected {SAMPLE_RATE}")
        if f.frames == 0:
            raise ValueError(f"{path}: no audio samples")
        if f.frames >= length:
            f.seek(int(rng.integers(f.frames - length + 1)))
            x = f.read(length, dtype="float32", always_2d=True)
        else:
            x = f.read(dtype="float32", always_2d=True)
            x = x[(int(rng.integers(len(x))) + np.arange(length)) % len(x)]
    return x.mean(axis=1)


def index_rirs(root: Path, sets: List[str]) -> List[Path]:
    """RIR files of each set: those its rir_list files name, else every wav below it."""
    files: List[Path] = []
    for name in sets:
        lists = sorted((root / name).glob("**/rir_list"))
        if not lists:
            files += sorted((root / name).glob("**/*.wav"))
        for rir_list in lists:
            for lineno, line in enumerate(rir_list.read_text().splitlines(), 1):
                listed = line.split()[-1] if line.split() else ""
                path = root.joinpath(*Path(listed).parts[1:])  # listed relative to RIRS_NOISES' parent
                if not listed.endswith(".wav") or not path.is_file():
                    raise ConfigError(f"{rir_list}:{lineno}: RIR file {listed!r} not found under {root}")
                files.append(path)
    return files


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + g * noise with g such that 10 log10(P(speech) / P(g * noise)) = snr_db."""
    p_speech, p_noise = float(np.mean(speech.astype(np.float64) ** 2)), float(np.mean(noise.astype(np.float64) ** 2))
    if p_noise == 0.0:
        return speech
    gain = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with `rir`, aligned to its direct-path peak, at the input's power."""
    peak = int(np.argmax(np.abs(rir)))
    wet = fftconvolve(speech.astype(np.float64), rir.astype(np.float64))[peak:peak + len(speech)]
    p_in, p_out = float(np.mean(speech.astype(np.float64) ** 2)), float(np.mean(wet ** 2))
    return (wet * np.sqrt(p_in / p_out) if p_out > 0 else wet).astype(np.float32)


def check_conf(conf) -> Dict[str, float]:
    """Refuse bad values of an augment conf (upmp.train.schema.AugmentConf); returns the kind weights."""
    kinds = conf.kinds
    if (not isinstance(kinds, dict) or set(kinds) - set(KINDS)
            or not all(isinstance(w, (int, float)) and w >= 0 for w in kinds.values())):
        raise ConfigError(f"augment.kinds: expected weights >= 0 for {', '.join(KINDS)}, got {kinds!r}")
    if not isinstance(conf.prob, (int, float)) or not 0.0 <= conf.prob <= 1.0:
        raise ConfigError(f"augment.prob: expected a probability in [0, 1], got {conf.prob!r}")
    if not isinstance(conf.snr, dict):
        raise ConfigError(f"augment.snr: expected {{noise: [lo, hi], music: ..., babble: ...}}, got {conf.snr!r}")
    if not isinstance(conf.rir_sets, list) or not conf.rir_sets:
        raise ConfigError(f"augment.rir_sets: expected a list such as [simulated_rirs], got {conf.rir_sets!r}")
    return {k: float(kinds.get(k, 0)) for k in KINDS}


class Augmenter:
    """wav (N,) float32 at 16 kHz -> augmented wav (N,) float32; deterministic given the rng.
    conf: train_conf.augment (upmp.train.schema.AugmentConf)."""

    def __init__(self, conf):
        weights = check_conf(conf)
        self.prob = float(conf.prob)
        self.snr = {k: _range(conf.snr.get(k), f"snr.{k}") for k in MUSAN_DIRS}
        self.babble_speakers = _range(conf.babble_speakers, "babble_speakers", integer=True)
        self.files: Dict[str, List[Path]] = {}
        musan, rirs = str(conf.musan_root or ""), str(conf.rirs_root or "")
        for kind, sub in MUSAN_DIRS.items():
            if musan and weights[kind] > 0:
                self.files[kind] = sorted((Path(musan) / sub).glob("*/*.wav"))
                if not self.files[kind]:
                    raise ConfigError(f"{Path(musan) / sub}: no <subdir>/*.wav files (MUSAN {sub}, for {kind})")
        if rirs and weights["reverb"] > 0:
            self.files["reverb"] = index_rirs(Path(rirs), conf.rir_sets)
            if not self.files["reverb"]:
                raise ConfigError(f"{rirs}: no RIR wav files under {', '.join(conf.rir_sets)}")
        self.kinds = [k for k in KINDS if k in self.files]
        total = sum(weights[k] for k in self.kinds)
        self.weights = np.array([weights[k] / total for k in self.kinds])
        logger.info("augmentation (prob %.2f): %s", self.prob,
                    ", ".join(f"{k} {len(self.files[k])} files" for k in self.kinds) or "none")

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"augment: expected a 1-D waveform, got shape {wav.shape}")
        if not self.kinds or not wav.size or rng.random() >= self.prob:
            return wav
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
        files = self.files[kind]
        if kind == "reverb":
            path = files[int(rng.integers(len(files)))]
            rir, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            if rate != SAMPLE_RATE or not len(rir):
                raise ValueError(f"{path}: expected a non-empty {SAMPLE_RATE} Hz RIR, got {len(rir)} samples at {rate} Hz")
            return reverberate(wav, rir[:, 0])
        count = int(rng.integers(self.babble_speakers[0], self.babble_speakers[1] + 1)) if kind == "babble" else 1
        noise = sum(read_segment(files[int(i)], len(wav), rng) for i in rng.integers(len(files), size=count))
        return mix_at_snr(wav, noise, float(rng.uniform(*self.snr[kind])))
