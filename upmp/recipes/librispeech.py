"""LibriSpeech data preparation with the UniPool paper's protocol: the corpus tree -> Kaldi data dirs + trials.

Layout read:
    <root>/<subset>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac    16 kHz flac
    <root>/SPEAKERS.TXT     `ID | SEX | SUBSET | MINUTES | NAME`, `;` comment lines
Written: <out>/librispeech_{train,valid,test}/ with wav.scp, utt2spk, spk2utt, spk2gender, utt2dur;
`trials` (Kaldi form) in valid and test. train = train-clean-100 + train-clean-360 +
train-other-500, valid = dev-clean + dev-other, test = test-clean + test-other (the paper's
split: 2,338 / 73 / 73 speakers). Utterance ids are the file stems (`6829-68771-0026`).

wav.scp holds the plain flac path: the corpus is already 16 kHz and soundfile (libsndfile)
decodes flac natively, so a `sox ... |` pipe would only add a process per utterance
(281k for the training set). Kaldi binaries, which read only wav, need
`flac -c -d -s <file> |` instead; upmp reads either.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

from upmp.data.audio import SAMPLE_RATE, audio_headers
from upmp.data.kaldi_dir import DataDir, DataDirError
from upmp.recipes.protocols import PAPER_URL, load_paper_trials, regenerate_trials, resolve_protocol
from upmp.data.trials import write_kaldi_trials

logger = logging.getLogger(__name__)

SUBSETS = {
    "train": ("train-clean-100", "train-clean-360", "train-other-500"),
    "valid": ("dev-clean", "dev-other"),
    "test": ("test-clean", "test-other"),
}
TRIAL_CLASS_SIZE = 18000   # paper: about 18,000 target and 18,000 nontarget trials per list
UTT_PATTERN = re.compile(r"^(\d+)-(\d+)-(\d+)\.flac$")


def read_speakers_txt(path: Path) -> Dict[str, Tuple[str, str]]:
    """SPEAKERS.TXT -> {speaker id: ('m' | 'f', subset)}. Names may contain `|`."""
    speakers: Dict[str, Tuple[str, str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith(";") or not line.strip():
                continue
            fields = [x.strip() for x in line.split("|", 4)]
            if len(fields) < 5 or not fields[0].isdigit() or fields[1] not in ("M", "F"):
                raise DataDirError(f"{path}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES | NAME' with "
                                   f"SEX M|F, got {line.strip()!r}")
            if fields[0] in speakers:
                raise DataDirError(f"{path}:{lineno}: speaker {fields[0]!r} listed twice")
            speakers[fields[0]] = (fields[1].lower(), fields[2])
    if not speakers:
        raise DataDirError(f"{path}: no speakers")
    return speakers


def scan_subset(subset_dir: Path) -> Dict[str, Path]:
    """{utt id: flac path} below <subset>/<spk>/<chapter>/; a file whose name disagrees with its
    directories is an error (it would get the wrong speaker)."""
    utts: Dict[str, Path] = {}
    for path in sorted(subset_dir.glob("*/*/*.flac")):
        m = UTT_PATTERN.match(path.name)
        if not m or (m.group(1), m.group(2)) != (path.parent.parent.name, path.parent.name):
            raise DataDirError(f"{path}: expected <spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac")
        utts[path.stem] = path.resolve()
    return utts


def make_librispeech_data_dir(utts: Dict[str, Path], genders: Dict[str, str], what: str) -> DataDir:
    headers = audio_headers(utts, f"LibriSpeech {what} headers")
    for utt, (rate, _) in headers.items():
        if rate != SAMPLE_RATE:
            raise DataDirError(f"{utts[utt]}: {rate} Hz, LibriSpeech is 16 kHz")
    wav_scp = {utt: str(path) for utt, path in utts.items()}
    utt2dur = {utt: seconds for utt, (_, seconds) in headers.items()}
    utt2spk = {u: u.split("-", 1)[0] for u in utts}
    return DataDir(wav_scp, utt2spk, utt2dur=utt2dur,
                   spk2gender={s: genders[s] for s in set(utt2spk.values())})


def prepare_librispeech(root: str, out_dir: str, protocol_dir: Optional[str] = None,
                        cache_dir: Optional[str] = None, url_base: Optional[str] = PAPER_URL,
                        seed: int = 0, prefix: str = "librispeech") -> Dict[str, Path]:
    """Write <out_dir>/<prefix>_{train,valid,test} (+ trials in valid and test) and return their paths.

    Missing subsets are skipped with a warning; a set with no subset at all is an error.
    Trials are the paper's (resolve_protocol) or, failing that, regenerated from `seed`.
    """
    root_p, out = Path(root), Path(out_dir)
    info_path = root_p / "SPEAKERS.TXT"
    if not info_path.is_file():
        raise DataDirError(f"{info_path}: not found (LibriSpeech's speaker metadata)")
    info = read_speakers_txt(info_path)
    protocol = resolve_protocol("librispeech", protocol_dir, cache_dir, url_base)
    outputs = {}
    for name, subsets in SUBSETS.items():
        utts: Dict[str, Path] = {}
        for subset in subsets:
            if not (root_p / subset).is_dir():
                logger.warning("LibriSpeech: %s not found, %s set without it", root_p / subset, name)
                continue
            found = scan_subset(root_p / subset)
            logger.info("LibriSpeech %s: %d utterances", subset, len(found))
            utts.update(found)
        if not utts:
            raise DataDirError(f"{root_p}: no audio for the {name} set (looked in {', '.join(subsets)})")
        for utt in utts:
            if utt.split("-", 1)[0] not in info:
                raise DataDirError(f"{info_path}: speaker {utt.split('-', 1)[0]!r} of {utts[utt]} is not listed")
        data = make_librispeech_data_dir(utts, {s: g for s, (g, _) in info.items()}, name)
        outputs[name] = out / f"{prefix}_{name}"
        data.write(outputs[name])
        n_spk = len(set(data.utt2spk.values()))
        if name == "train":
            logger.info("LibriSpeech train: %d utterances, %d speakers", len(utts), n_spk)
            continue
        if protocol is not None:
            trials = load_paper_trials(protocol[f"trials_{name}"], data.utt2spk, str(root_p))
        else:
            trials = regenerate_trials(data.utt2spk, TRIAL_CLASS_SIZE, seed + (name == "test"))
        write_kaldi_trials(str(outputs[name] / "trials"), trials)
        logger.info("LibriSpeech %s: %d utterances, %d speakers, %d trials (%d target)", name, len(utts),
                    n_spk, len(trials), sum(t for *_, t in trials))
    return outputs
