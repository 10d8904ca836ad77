"""Convert a data dir's audio once to flac or wav files, and point its wav.scp at them.

Online training decodes a random crop of each utterance at every step: from an `ffmpeg ... |`
pipe (VoxCeleb2's m4a) that costs a process and a whole-file decode per row, from a flac or
wav file a seek and the crop (upmp.data.audio.read_utterance_crop). WeSpeaker and ESPnet
users convert VoxCeleb2 once; this does it for any wav.scp entry (pipe, file, ark), in shares
for parallel jobs (`run.pl JOB=1:N ... --job JOB --num_jobs N`):

    <out_dir>/<speaker>/<wav.scp key>.<flac|wav>     16 kHz mono 16-bit PCM

Resumable: a file is written under a `.part` name and renamed into place when complete, so an
existing file is complete and is skipped, and a killed job leaves nothing that passes for done.
Samples are those `load_audio` gives for the entry (resampled to 16 kHz, channels averaged),
stored as 16-bit PCM: a 16-bit 16 kHz mono source (the ffmpeg pipes) converts bit for bit.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Tuple

import soundfile

from upmp.data.audio import SAMPLE_RATE, AudioError, load_audio
from upmp.data.kaldi_dir import DataDir, DataDirError, PathLike, write_table

logger = logging.getLogger(__name__)

FORMATS = ("flac", "wav")


def converted_paths(data: DataDir, out_dir: PathLike, fmt: str) -> Dict[str, Path]:
    """{wav.scp key: converted file}; files sit in one folder per speaker (of the recording's
    first segment when the dir has segments), so no folder holds a whole corpus."""
    if fmt not in FORMATS:
        raise DataDirError(f"unknown audio format {fmt!r} to convert to ({', '.join(FORMATS)})")
    speaker = {}
    for utt, spk in data.utt2spk.items():
        speaker.setdefault(data.segments[utt].reco if data.segments is not None else utt, spk)
    out = Path(out_dir).resolve()
    return {key: out / speaker.get(key, "_") / f"{key}.{fmt}" for key in data.wav_scp}


def convert_share(data_dir: PathLike, out_dir: PathLike, fmt: str, job: int = 0, num_jobs: int = 1) -> Tuple[int, int]:
    """Convert job `job`'s share (every num_jobs-th key from job-1; job 0: all) of the entries
    not converted yet -> (converted now, already there)."""
    from tqdm import tqdm
    data = DataDir.load(data_dir, validate=False)
    if num_jobs < 1 or not 0 <= job <= num_jobs:
        raise DataDirError(f"--job {job} --num_jobs {num_jobs}: need 1 <= job <= num_jobs (or job 0: all)")
    targets = list(converted_paths(data, out_dir, fmt).items())
    share = targets if job == 0 else targets[job - 1::num_jobs]
    done = 0
    for key, dst in tqdm(share, desc=f"convert to {fmt}", unit="file", mininterval=10):
        if dst.is_file():
            continue
        try:
            samples = load_audio(data.wav_scp[key], name=key)
        except AudioError as e:
            raise DataDirError(f"{data_dir}/wav.scp: {key}: {e}") from None
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(dst.name + ".part")
        soundfile.write(str(part), samples, SAMPLE_RATE, subtype="PCM_16", format=fmt.upper())
        os.replace(part, dst)
        done += 1
    return done, len(share) - done


def point_wav_scp(data_dir: PathLike, out_dir: PathLike, fmt: str) -> int:
    """Rewrite data_dir/wav.scp to the converted files and, without segments, write utt2dur
    from their headers; every file must be there. -> number of entries."""
    d = Path(data_dir)
    data = DataDir.load(d, validate=False)
    paths = converted_paths(data, out_dir, fmt)
    missing: List[str] = [k for k, p in paths.items() if not p.is_file()]
    if missing:
        raise DataDirError(f"{d}/wav.scp: {len(missing)} of {len(paths)} entries are not converted yet "
                           f"(first: {missing[0]} -> {paths[missing[0]]}); run the conversion jobs again, "
                           "they resume where they stopped")
    write_table(d / "wav.scp", {k: str(p) for k, p in paths.items()})
    if data.segments is None:
        durations = {k: soundfile.info(str(p)).frames / SAMPLE_RATE for k, p in paths.items()}
        write_table(d / "utt2dur", {u: f"{durations[u]:.3f}" for u in data.utt2spk})
    return len(paths)
