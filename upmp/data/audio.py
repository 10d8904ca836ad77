"""Audio loading from wav.scp entries: file paths, `cmd |` pipes and `file.ark:offset`.

Every loader returns float32 mono samples in [-1, 1] at the requested rate
(16 kHz by default), resampled with a polyphase filter when needed. Samples are checked
where they are decoded: NaN / inf values, a WAV whose header promises more samples than
the file holds, and (on request) audio shorter than the upstream's receptive field are
AudioErrors naming the file. `read_utterance_crop` decodes only a crop of a wav / flac
file (soundfile seek); pipes, ark entries and resampled files decode whole.
"""
from __future__ import annotations

import io
import logging
import functools
import math
import os
import shlex
import subprocess
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import soundfile

from upmp.data.crops import wrap_crop
from upmp.data.kaldi_dir import DataDirError, PathLike, Segment
from upmp.errors import AudioError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# The receptive field of the wav2vec 2.0 / HuBERT / WavLM CNN front end (kernels 10,3,3,3,3,2,2,
# strides 5,2,2,2,2,2,2): 400 samples (25 ms at 16 kHz) give its first 20 ms frame; less gives none.
MIN_SAMPLES = 400
SEEKABLE_FORMATS = ("WAV", "WAVEX", "FLAC")  # sample-accurate seek in libsndfile
# data-chunk sizes a writer puts in a header it cannot go back to fix (the length is unknown when
# writing to a pipe): 0 and 0xFFFFFFFF (ffmpeg, libsndfile), 0x7FFFF000 (SoX)
STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFF000)
# Audio file extensions, one list: the first part are the files upmp decodes itself (soundfile, or
# ffmpeg for FFMPEG_EXTENSIONS): what a folder given to upmp-embed is searched for; the rest name
# audio only inside a wav.scp command that decodes them (headerless .pcm / .raw need the command's
# format options; .mp4 is not a libsndfile format): an import resolves every such word as a path.
DECODED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".sph")
AUDIO_EXTENSIONS = DECODED_EXTENSIONS + (".mp4", ".aif", ".aiff", ".au", ".nist", ".pcm", ".raw")
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".opus")  # containers libsndfile does not read: decoded by ffmpeg
NON_FINITE_HINT = "re-encode or replace the file, or remove the utterance from the data dir"


def check_finite(array: np.ndarray, what: str, hint: str = NON_FINITE_HINT, error=AudioError) -> None:
    """Raise `error` ("<what>: N of M values are NaN or inf (first at index i); <hint>") when
    `array` holds a non-finite value. Shared by whatever decodes or writes float data."""
    a = np.asarray(array)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a.ravel()))
        raise error(f"{what}: {bad.size} of {a.size} values are NaN or inf (first at index {bad[0]}); {hint}")


def ffmpeg_entry(path: PathLike, resample: bool = False) -> str:
    """A wav.scp value (a `cmd |` pipe) decoding `path` with ffmpeg to 16-bit WAV: at the file's own
    rate and channels (load_audio converts them), or with resample at SAMPLE_RATE mono (ffmpeg
    converts them, as the VoxCeleb2 recipe writes its m4a files)."""
    convert = f"-ar {SAMPLE_RATE} -ac 1 " if resample else ""
    return f"ffmpeg -nostdin -v 8 -i {shlex.quote(str(path))} -f wav {convert}-acodec pcm_s16le - |"


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
    with _open_file(entry) as f:
        try:
            samples = f.read(dtype="float32", always_2d=False)
        except Exception as e:  # libsndfile: "flac decoder lost sync" etc.
            raise AudioError(_truncated(entry, f"cannot decode it ({e})")) from None
        _check_complete(f, entry, len(samples), f.frames)
        return samples, int(f.samplerate)


def _open_file(path: str) -> soundfile.SoundFile:
    try:
        return soundfile.SoundFile(path)
    except Exception as e:  # soundfile raises several types; one message for all
        raise AudioError(f"cannot read audio file {path!r}: {e}") from None


def _truncated(path: str, problem: str) -> str:
    return (f"audio file {path!r}: {problem}: the file is truncated or corrupt; copy it again from the "
            "corpus, or remove the utterance from the data dir")


def _check_complete(f: soundfile.SoundFile, path: str, got: int, expected: int) -> None:
    """A decode that gave fewer samples than asked for, or a WAV whose header promises more
    data than the file holds (libsndfile silently shortens those), is an AudioError."""
    if got < expected:
        raise AudioError(_truncated(path, f"decoded {got} of the {expected} samples its header promises"))
    if f.format in ("WAV", "WAVEX"):
        short = _wav_shortfall_cached(path)
        if short is not None:
            raise AudioError(_truncated(path, f"the WAV header promises {short[0]} samples but the file "
                                              f"holds {short[1]}"))


_COMPLETE_WAVS: Dict[Tuple[str, int, int], None] = {}  # files seen complete (online crops reopen them)


def _wav_shortfall_cached(path: str) -> Optional[Tuple[int, int]]:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key in _COMPLETE_WAVS:
        return None
    short = wav_data_shortfall(path)
    if short is None and len(_COMPLETE_WAVS) < 2_000_000:
        _COMPLETE_WAVS[key] = None
    return short


def wav_data_shortfall(path: str) -> Optional[Tuple[int, int]]:
    """(samples the data chunk of a RIFF/WAVE header declares, samples the file holds) when the
    file holds fewer; None when complete, not a RIFF file, or the size is a streaming placeholder."""
    with open(path, "rb") as f:
        return _wav_stream_shortfall(f, os.fstat(f.fileno()).st_size)


def _wav_stream_shortfall(f, total: int) -> Optional[Tuple[int, int]]:
    """wav_data_shortfall of an open binary stream of `total` bytes (a file, or a pipe's output)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = 0
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if cid == b"fmt ":
            fmt = f.read(size + (size & 1))
            block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
            continue
        if cid == b"data":
            have = total - f.tell()
            if block_align <= 0 or size in STREAMING_SIZES or size <= have:
                return None
            return size // block_align, have // block_align
        f.seek(size + (size & 1), 1)


def _is_ark_entry(entry: str) -> bool:
    head, sep, offset = entry.rpartition(":")
    return bool(sep) and offset.split("[")[0].isdigit() and head.endswith(".ark")


def _decode_bytes(data: bytes, what: str) -> Tuple[np.ndarray, int]:
    if not data:
        raise AudioError(f"command produced no audio: {what!r}")
    short = _wav_stream_shortfall(io.BytesIO(data), len(data))
    if short is not None:  # libsndfile silently shortens it, as it does a truncated file
        raise AudioError(f"the output of {what!r}: the WAV header promises {short[0]} samples but the command "
                         f"gave {short[1]}: the audio is truncated or the command stopped early; fix the "
                         "command or the file it reads, or remove the utterance from the data dir")
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


@functools.lru_cache(maxsize=64)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR that scipy's resample_poly designs for up / down (its default Kaiser
    window, beta 5, 10 taps per phase each side): designing it costs more than filtering a few
    seconds when up / down are large (e.g. 147 / 320 for 44.1 kHz), so each pair is designed once."""
    from scipy.signal import firwin
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(N,) float samples at `rate` -> float32 at `target` (polyphase, scipy's resample_poly)."""
    if rate == target:
        return samples
    g = math.gcd(rate, target)
    from scipy.signal import resample_poly  # here: scipy.signal takes 0.5 s to import
    up, down = target // g, rate // g
    h = _resampling_filter(up, down)
    if np.issubdtype(samples.dtype, np.floating):
        h = h.astype(samples.dtype)  # as resample_poly does with the filter it designs: same output, bit for bit
    return resample_poly(samples, up, down, window=h).astype(np.float32)


def load_audio(entry: str, segment: Optional[Segment] = None, rate: int = SAMPLE_RATE,
               name: str = "") -> np.ndarray:
    """wav.scp value (+ optional segment) -> float32 mono samples at `rate`; NaN / inf samples
    are an AudioError."""
    samples, in_rate = read_wav_entry(entry)
    samples = to_mono(samples)
    if segment is not None:
        start, end = segment_range(segment, len(samples), in_rate)
        samples = samples[start:end]
    if in_rate != rate:
        logger.debug("resampling %s from %d Hz to %d Hz", name or entry, in_rate, rate)
        samples = resample(samples, in_rate, rate)
    if samples.size == 0:
        raise AudioError(f"empty audio for {name or entry!r}")
    check_finite(samples, _source_name(entry))
    return np.ascontiguousarray(samples, dtype=np.float32)


def segment_range(segment: Segment, num_samples: int, rate: int) -> Tuple[int, int]:
    """[start, end) samples of a segment in a recording of num_samples (end -1: to the end),
    clipped to the recording as slicing clips."""
    end = num_samples if segment.end == -1 else min(int(round(segment.end * rate)), num_samples)
    return min(int(round(segment.start * rate)), end), end


def _source_name(entry: str) -> str:
    entry = entry.strip()
    return f"the output of {entry[:-1].strip()!r}" if entry.endswith("|") else f"audio file {entry!r}"


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


def check_length(num_samples: int, min_samples: int, strict: bool, what: str, rate: int = SAMPLE_RATE) -> None:
    """Audio shorter than the upstream's receptive field (min_samples) gives no frame: an
    AudioError for training data (strict), a logged warning for test data."""
    if num_samples >= min_samples:
        return
    problem = (f"{what}: {num_samples} samples ({1000 * num_samples / rate:.1f} ms), shorter than the "
               f"{min_samples} samples ({1000 * min_samples / rate:.0f} ms) the upstream needs for one frame")
    if strict:
        raise AudioError(f"{problem}; remove the utterance from the training data (e.g. by its utt2dur)")
    logger.warning("%s; its embedding comes from too little audio", problem)


def load_utterance(data, utt: str, source: str = "wav.scp", rate: int = SAMPLE_RATE,
                   min_samples: int = 0, strict: bool = True) -> np.ndarray:
    """An utterance of a DataDir (wav.scp entry + segment) -> float32 mono samples; a read
    failure is a DataDirError naming `source` and the utterance. Fewer than `min_samples`
    samples (upstream's receptive field, MIN_SAMPLES) is an error when `strict` (training
    data), a logged warning otherwise (test data)."""
    entry, segment = data.wav_entry(utt)
    try:
        samples = load_audio(entry, segment, rate, name=utt)
        check_length(len(samples), min_samples, strict, _source_name(entry), rate)
    except AudioError as e:
        raise DataDirError(f"{source}: utterance {utt}: {e}") from None
    return samples


def read_utterance_crop(data, utt: str, crop_samples: int, start_of: Callable[[int], int],
                        source: str = "wav.scp", rate: int = SAMPLE_RATE, min_samples: int = 0) -> np.ndarray:
    """A crop (crop_samples,) of a training utterance of n samples: start = start_of(n), samples
    [start, start + crop_samples), or, when n < crop_samples, the utterance repeated from `start`
    (wrap padding). Bit for bit the same crop as cutting `load_utterance`'s whole decode, but a
    wav / flac file at `rate` decodes only the crop (n from its header, then seek + read);
    pipes, ark entries and files at other rates decode whole. Errors as in load_utterance (strict)."""
    entry, segment = data.wav_entry(utt)
    try:
        return _read_crop(entry.strip(), segment, crop_samples, start_of, rate, min_samples, utt)
    except AudioError as e:
        raise DataDirError(f"{source}: utterance {utt}: {e}") from None


def _read_crop(entry: str, segment: Optional[Segment], crop: int, start_of: Callable[[int], int],
               rate: int, min_samples: int, name: str) -> np.ndarray:
    what = _source_name(entry)
    if not entry.endswith("|") and not _is_ark_entry(entry):
        with _open_file(entry) as f:
            if f.format in SEEKABLE_FORMATS and f.samplerate == rate:
                first, end = (0, f.frames) if segment is None else segment_range(segment, f.frames, rate)
                n = end - first
                if n <= 0:
                    raise AudioError(f"empty audio for {name!r}")
                check_length(n, min_samples, True, what, rate)
                start = start_of(n)
                offset, count = (first + start, crop) if n >= crop else (first, n)  # short: read it all, wrap
                try:
                    f.seek(offset)
                    samples = to_mono(f.read(count, dtype="float32", always_2d=False))
                except Exception as e:  # libsndfile: "flac decoder lost sync" etc.
                    raise AudioError(_truncated(entry, f"cannot decode samples {offset}-{offset + count} ({e})")) \
                        from None
                _check_complete(f, entry, len(samples), count)
                check_finite(samples, what)
                return np.ascontiguousarray(wrap_crop(samples, 0 if n >= crop else start, crop))
    samples = load_audio(entry, segment, rate, name=name)
    check_length(len(samples), min_samples, True, what, rate)
    return np.ascontiguousarray(wrap_crop(samples, start_of(len(samples)), crop))
