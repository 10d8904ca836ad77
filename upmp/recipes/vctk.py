"""VCTK data preparation with the UniPool paper's protocol: the corpus tree -> Kaldi data dirs + trials.

Layouts read (either):
    <root>/wav48_silence_trimmed/<spk>/<spk>_<MMM>_mic{1,2}.flac   VCTK 0.92, 48 kHz flac
    <root>/wav48/<spk>/<spk>_<MMM>.wav                            VCTK 0.80 and older, 48 kHz wav
    <root>/speaker-info.txt   `ID AGE GENDER ACCENTS REGION [COMMENTS]`, ids `p225` or `225`
Written: <out>/vctk_{train,valid,test}/ with wav.scp, utt2spk, spk2utt, spk2gender, utt2dur;
`trials` (Kaldi form) in valid and test. Utterance ids are `<spk>_<MMM>` (the paper's
`p329/p329_050.wav` is `p329_050`). Audio not at 16 kHz is read through
`sox <file> -t wav -r 16000 -b 16 -c 1 - |`. The paper's protocol: p315 removed, prompts
001-024 (the same texts for every speaker) dropped, speakers split 72 / 18 / 18, its trial lists.
"""
from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from upmp.data.audio import SAMPLE_RATE, audio_headers
from upmp.data.kaldi_dir import DataDir, DataDirError
from upmp.recipes.protocols import (PAPER_URL, load_paper_trials, read_speaker_csv, regenerate_trials, resolve_protocol,
                                 split_sizes, split_speakers)
from upmp.data.trials import write_kaldi_trials

logger = logging.getLogger(__name__)

REMOVED_SPEAKERS = ("p315",)       # no usable text / audio (the paper removes it)
FIRST_PROMPT = 25                  # prompts 001-024 are read by every speaker: dropped
PAPER_SPLIT = {"train": 72, "valid": 18, "test": 18}
TRIAL_CLASS_SIZE = 8000            # paper: about 8,000 target and 8,000 nontarget trials per list
SETS = ("train", "valid", "test")


def read_speaker_info(path: Path) -> Dict[str, Tuple[int, str]]:
    """speaker-info.txt -> {speaker id: (age, 'm' | 'f')}; bare numbers get VCTK's `p` prefix."""
    info: Dict[str, Tuple[int, str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if lineno == 1 and fields[:1] == ["ID"]:
                continue
            if not fields:
                continue
            if len(fields) < 3 or not fields[1].isdigit() or fields[2].upper() not in ("M", "F"):
                raise DataDirError(f"{path}:{lineno}: expected 'ID AGE GENDER ...' with GENDER M|F, "
                                   f"got {line.strip()!r}")
            spk = f"p{fields[0]}" if fields[0].isdigit() else fields[0]
            if spk in info:
                raise DataDirError(f"{path}:{lineno}: speaker {spk!r} listed twice")
            info[spk] = (int(fields[1]), fields[2].lower())
    if not info:
        raise DataDirError(f"{path}: no speakers")
    return info


def scan_vctk(root: Path, mic: str = "mic1") -> Dict[str, Path]:
    """{utt id `<spk>_<MMM>`: audio path} of either layout, prompts >= 025, p315 removed."""
    if (root / "wav48_silence_trimmed").is_dir():
        audio_root, suffix = root / "wav48_silence_trimmed", f"_{mic}.flac"
    elif (root / "wav48").is_dir():
        audio_root, suffix = root / "wav48", ".wav"
    else:
        raise DataDirError(f"{root}: neither wav48_silence_trimmed/ (VCTK 0.92) nor wav48/ (older VCTK) found")
    pattern = re.compile(rf"^(\w+?)_(\d{{3}}){re.escape(suffix)}$")
    utts: Dict[str, Path] = {}
    for path in sorted(audio_root.glob("*/*")):
        m = pattern.match(path.name)
        if not m or m.group(1) != path.parent.name or m.group(1) in REMOVED_SPEAKERS:
            continue
        if int(m.group(2)) >= FIRST_PROMPT:
            utts[f"{m.group(1)}_{m.group(2)}"] = path.resolve()
    if not utts:
        raise DataDirError(f"{audio_root}: no <spk>/<spk>_<MMM>{suffix} files with prompt number >= {FIRST_PROMPT:03d}")
    logger.info("VCTK: %d utterances of %d speakers in %s", len(utts),
                len({u.rsplit("_", 1)[0] for u in utts}), audio_root)
    return utts


def wav_entry(path: Path, rate: int) -> str:
    """A plain path at 16 kHz, else a sox pipe to 16 kHz / 16 bit / mono."""
    if rate == SAMPLE_RATE:
        return str(path)
    return f"sox {shlex.quote(str(path))} -t wav -r {SAMPLE_RATE} -b 16 -c 1 - |"


def make_vctk_data_dir(utts: Dict[str, Path], genders: Dict[str, str]) -> DataDir:
    headers = audio_headers(utts, "VCTK headers")
    wav_scp = {utt: wav_entry(path, headers[utt][0]) for utt, path in utts.items()}
    utt2dur = {utt: seconds for utt, (_, seconds) in headers.items()}
    utt2spk = {u: u.rsplit("_", 1)[0] for u in utts}
    return DataDir(wav_scp, utt2spk, utt2dur=utt2dur,
                   spk2gender={s: genders[s] for s in set(utt2spk.values())})


def prepare_vctk(root: str, out_dir: str, mic: str = "mic1", protocol_dir: Optional[str] = None,
                 cache_dir: Optional[str] = None, url_base: Optional[str] = PAPER_URL, seed: int = 0,
                 prefix: str = "vctk") -> Dict[str, Path]:
    """Write <out_dir>/<prefix>_{train,valid,test} (+ trials in valid and test) and return their paths.

    The speaker split and trials are the paper's (resolve_protocol: protocol_dir, download
    into cache_dir from url_base, or, failing both, regenerated from `seed`).
    """
    root_p, out = Path(root), Path(out_dir)
    if mic not in ("mic1", "mic2"):
        raise DataDirError(f"--mic must be mic1 or mic2, got {mic!r}")
    info_path = root_p / "speaker-info.txt"
    if not info_path.is_file():
        raise DataDirError(f"{info_path}: not found (VCTK's speaker metadata)")
    info = read_speaker_info(info_path)
    utts = scan_vctk(root_p, mic)
    speakers = sorted({u.rsplit("_", 1)[0] for u in utts})
    unlisted = [s for s in speakers if s not in info]
    if unlisted:  # no gender, and in none of the paper's lists (VCTK 0.92's s5, for one)
        logger.warning("VCTK: speakers not in %s are not used: %s", info_path, " ".join(unlisted))
        speakers = [s for s in speakers if s in info]
        utts = {u: p for u, p in utts.items() if u.rsplit("_", 1)[0] in info}
    genders = {s: info[s][1] for s in speakers}
    protocol = resolve_protocol("vctk", protocol_dir, cache_dir, url_base)
    if protocol is not None:
        split = _paper_split(protocol, speakers, str(root_p))
    else:
        sizes = split_sizes(len(speakers), PAPER_SPLIT)
        split = split_speakers(speakers, sizes, seed, strata=genders)
        logger.info("VCTK: regenerated speaker split (seed %d, stratified by gender): %s", seed,
                    " / ".join(f"{len(split[k])} {k}" for k in SETS))
    data = make_vctk_data_dir(utts, genders)
    outputs = {}
    for name in SETS:
        keep = set(split[name])
        subset = data.subset(u for u in data.utts if data.utt2spk[u] in keep)
        if not subset.utts:
            raise DataDirError(f"{root_p}: the {name} set has no utterances")
        subset.write(out / f"{prefix}_{name}")
        outputs[name] = out / f"{prefix}_{name}"
        if name == "train":
            continue
        if protocol is not None:
            trials = load_paper_trials(protocol[f"trials_{name}"], subset.utt2spk, str(root_p))
        else:
            trials = regenerate_trials(subset.utt2spk, TRIAL_CLASS_SIZE, seed + SETS.index(name))
        write_kaldi_trials(str(outputs[name] / "trials"), trials)
        n_tar = sum(t for *_, t in trials)
        logger.info("VCTK %s: %d utterances, %d speakers, %d trials (%d target)", name, len(subset.utts),
                    len(keep), len(trials), n_tar)
    logger.info("VCTK train: %d utterances, %d speakers", sum(s in split["train"] for s in data.utt2spk.values()),
                len(split["train"]))
    return outputs


def _paper_split(protocol: Dict[str, Path], speakers: List[str], root: str) -> Dict[str, List[str]]:
    """The paper's speaker lists; valid/test speakers must all be in the tree (their trials need
    them), a missing training speaker only warns (e.g. p280 has no mic2 recordings)."""
    present, split = set(speakers), {}
    for name in SETS:
        path = protocol[f"speakers_{name}"]
        listed = read_speaker_csv(path)
        missing = [(i, s) for i, s in enumerate(listed, 2) if s not in present]
        if missing and name != "train":
            lineno, spk = missing[0]
            raise DataDirError(f"{path}:{lineno}: {name} speaker {spk!r} has no audio under {root}")
        if missing:
            logger.warning("VCTK: %d training speakers of %s have no audio under %s: %s", len(missing), path,
                           root, " ".join(s for _, s in missing))
        split[name] = [s for s in listed if s in present]
    unused = present - set().union(*map(set, split.values()))
    if unused:
        logger.warning("VCTK: %d speakers of the tree are in none of the paper's lists (not used): %s",
                       len(unused), " ".join(sorted(unused)))
    return split
