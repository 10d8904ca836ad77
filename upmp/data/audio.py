"""Audio loading from wav.scp entries: file paths, `cmd |` pipes and `file.ark:offset`.

Every loader returns float32 mono samples in [-1, 1] at the requested rate
(16 kHz by default), resampled with a polyphase filter when needed.
"""
from __future__ import annotations

import io
import logging
import math
import subprocess
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import soundfile
from scipy.signal import resample_poly

from upmp.data.kaldi_dir import DataDirError, PathLike, Segment

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


from upmp.errors import AudioError  # noqa: F401  (re-exported)


def read_wav_entry(entry: str) -> Tuple[np.ndarray, int]:
    """Read a wav.scp value -> (samples (N,) or (N, C) float32, rate)."""
    entry = entry.strip()
    if entry.endswith("|"):
        cmd = entry[:-1].strip()
        proc = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise AudioError(f"command failed (exit {proc.returncode}): {cmd!r}: "
                             f"{err[-1] if err else 'no message'}")
        return _decode_bytes(proc.stdout, cmd)
    if _is_ark_entry(entry):
        import kaldiio
        rate, samples = kaldiio.load_mat(entry)
        return _int_to_float(np.asarray(samples)), int(rate)
    try:
        samples, rate = soundfile.read(entry, dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises several types; one message for all
        raise AudioError(f"cannot read audio file {entry!r}: {e}") from None
    return samples, int(rate)


def _is_ark_entry(entry: str) -> bool:
    head, sep, offset = entry.rpartition(":")
    return bool(sep) and offset.split("[")[0].isdigit() and head.endswith(".ark")


def _decode_bytes(data: bytes, what: str) -> Tuple[np.ndarray, int]:
    if not data:
        raise AudioError(f"command produced no audio: {what!r}")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:
        raise AudioError(f"cannot decode the output of {what!r}: {e}") from None
    return samples, int(rate)


def _int_to_float(x: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    return x.astype(np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) -> (N,) by averaging channels."""
    return samples.mean(axis=1).astype(np.float32) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    g = math.gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def load_audio(entry: str, segment: Optional[Segment] = None, rate: int = SAMPLE_RATE,
               name: str = "") -> np.ndarray:
    """wav.scp value (+ optional segment) -> float32 mono samples at `rate`."""
    samples, in_rate = read_wav_entry(entry)
    samples = to_mono(samples)
    if segment is not None:
        start = int(round(segment.start * in_rate))
        end = len(samples) if segment.end == -1 else int(round(segment.end * in_rate))
        samples = samples[start:end]
    if in_rate != rate:
        logger.debug("resampling %s from %d Hz to %d Hz", name or entry, in_rate, rate)
        samples = resample(samples, in_rate, rate)
    if samples.size == 0:
        raise AudioError(f"empty audio for {name or entry!r}")
    return np.ascontiguousarray(samples, dtype=np.float32)


def audio_headers(paths: Mapping[str, PathLike], desc: str = "audio headers") -> Dict[str, Tuple[int, float]]:
    """{key: (sample rate, seconds)} from the headers of audio files (corpus preparation);
    an unreadable file is a DataDirError naming it."""
    from tqdm import tqdm
    out: Dict[str, Tuple[int, float]] = {}
    for key, path in tqdm(paths.items(), desc=desc, unit="file", mininterval=10, disable=len(paths) < 5000):
        try:
            info = soundfile.info(str(path))
        except Exception as e:  # soundfile raises several types; one message for all
            raise DataDirError(f"{path}: cannot read the audio header: {e}") from None
        out[key] = (int(info.samplerate), info.frames / info.samplerate)
    return out


def sample_rate_of(entry: str) -> int:
    """Sample rate of a wav.scp value: from the file header for plain paths, by reading
    the audio for pipes and ark entries."""
    entry = entry.strip()
    if entry.endswith("|") or _is_ark_entry(entry):
        return read_wav_entry(entry)[1]
    try:
        return int(soundfile.info(entry).samplerate)
    except Exception as e:
        raise AudioError(f"cannot read audio file {entry!r}: {e}") from None


def load_utterance(data, utt: str, source: str = "wav.scp", rate: int = SAMPLE_RATE) -> np.ndarray:
    """An utterance of a DataDir (wav.scp entry + segment) -> float32 mono samples; a read
    failure is a DataDirError naming `source` and the utterance."""
    entry, segment = data.wav_entry(utt)
    try:
        return load_audio(entry, segment, rate, name=utt)
    except AudioError as e:
        raise DataDirError(f"{source}: utterance {utt}: {e}") from None
