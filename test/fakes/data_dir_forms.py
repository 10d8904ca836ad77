"""ONE synthetic set of utterances written as a data dir of each toolkit (Kaldi, ESPnet, WeSpeaker, ...)
and the canonical ids and trials every form must import to (test/upmp/data/test_import_dir.py,
test/recipes/test_import.py)."""
import hashlib
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import soundfile

from helpers import tone
from upmp.data.kaldi_dir import write_table

SPEAKERS, VIDEOS, UTTS = 4, 2, 2


@dataclass
class Form:
    src: Path                  # the data dir as its toolkit leaves it
    ids: Dict[str, str]        # canonical id (id00001/vid1/00001) -> the form's utterance id
    trials: Optional[Path]     # a trial list to pass with --trials (None: the dir's own list)
    lossless: bool = True


def canonical_utts() -> Dict[str, tuple]:
    """id00001/vid1/00001 -> (seconds (multiple of 10 ms), frequency, seed)."""
    utts, k = {}, 0
    for s in range(1, SPEAKERS + 1):
        for v in range(1, VIDEOS + 1):
            for u in range(1, UTTS + 1):
                utts[f"id0000{s}/vid{v}/0000{u}"] = (0.8 + 0.07 * k, 150 + 60 * s + 9 * k, k)
                k += 1
    return utts


def canonical_trials():
    """Every pair once: (a, b, same speaker)."""
    return [(a, b, a.split("/")[0] == b.split("/")[0]) for a, b in combinations(sorted(canonical_utts()), 2)]


def kaldi_id(c: str) -> str:
    return c.replace("/", "-")


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def kaldi_trials(path: Path, ids: Dict[str, str]) -> Path:
    return write_lines(path, [f"{ids[a]} {ids[b]} {'target' if t else 'nontarget'}" for a, b, t in canonical_trials()])


def spk_of(c: str) -> str:
    return c.split("/")[0]


def make_forms(root: Path) -> Dict[str, Form]:
    """The corpus (PCM-16 wav and flac at 16 kHz, wav at 8 kHz) and one data dir per form,
    each named vox1 (so importing them all also exercises name collisions)."""
    utts = canonical_utts()
    corpus = root / "corpus"
    pcm: Dict[str, np.ndarray] = {}
    for c, (sec, freq, seed) in utts.items():
        (corpus / "wav" / c).parent.mkdir(parents=True, exist_ok=True)
        (corpus / "wav8k" / c).parent.mkdir(parents=True, exist_ok=True)
        # int16 samples written as such: libsndfile's float -> PCM scaling differs between wav and flac
        pcm[c] = np.round(tone(sec, freq, seed=seed) * 32767).astype(np.int16)
        soundfile.write(corpus / "wav" / f"{c}.wav", pcm[c], 16000, subtype="PCM_16")
        soundfile.write(corpus / "wav" / f"{c}.flac", pcm[c], 16000, subtype="PCM_16")
        soundfile.write(corpus / "wav8k" / f"{c}.wav", tone(sec, freq, rate=8000, seed=seed), 8000, subtype="PCM_16")
    wav = {c: str(corpus / "wav" / f"{c}.wav") for c in utts}
    forms: Dict[str, Form] = {}
    kid = {c: kaldi_id(c) for c in utts}

    def kaldi_dir(name: str, wav_scp: Dict[str, str], ids: Dict[str, str], spk2utt_only: bool = False) -> Path:
        d = root / "their" / name / "data" / "vox1"
        write_table(d / "wav.scp", {ids[c]: v for c, v in wav_scp.items()})
        utt2spk = {ids[c]: spk_of(c) for c in utts}
        write_table(d / "spk2utt", {s: " ".join(sorted(u for u in utt2spk if utt2spk[u] == s))
                                    for s in set(utt2spk.values())})
        if not spk2utt_only:
            write_table(d / "utt2spk", utt2spk)
        return d

    # Kaldi: plain paths, own trials
    d = kaldi_dir("kaldi_wav", wav, kid)
    kaldi_trials(d / "trials", kid)
    forms["kaldi_wav"] = Form(d, kid, None)
    # Kaldi: sox pipes on flac, VoxCeleb trial list
    d = kaldi_dir("kaldi_sox", {c: f"sox {corpus}/wav/{c}.flac -t wav - |" for c in utts}, kid)
    vox = write_lines(root / "their" / "kaldi_sox" / "veri_test2.txt",
                      [f"{int(t)} {a}.wav {b}.wav" for a, b, t in canonical_trials()])
    forms["kaldi_sox"] = Form(d, kid, vox)
    # Kaldi: ffmpeg pipes on flac named relative to the recipe dir, spk2utt only, utt2dur
    rel = root / "their" / "kaldi_ffmpeg"
    for c in utts:
        (rel / "audio" / c).parent.mkdir(parents=True, exist_ok=True)
        (rel / "audio" / f"{c}.flac").write_bytes((corpus / "wav" / f"{c}.flac").read_bytes())
    d = kaldi_dir("kaldi_ffmpeg", {c: f"ffmpeg -v 8 -i audio/{c}.flac -f wav -acodec pcm_s16le - |" for c in utts},
                  kid, spk2utt_only=True)
    write_table(d / "utt2dur", {kid[c]: f"{len(pcm[c]) / 16000:.2f}" for c in utts})
    forms["kaldi_ffmpeg"] = Form(d, kid, kaldi_trials(rel / "trials.txt", kid))
    # Kaldi: segments cut from one recording per video
    d = root / "their" / "kaldi_segments" / "data" / "vox1"
    wav_scp, segments = {}, {}
    for s in range(1, SPEAKERS + 1):
        for v in range(1, VIDEOS + 1):
            reco = f"id0000{s}-vid{v}"
            parts, t = [], 0
            for c in sorted(u for u in utts if u.startswith(f"id0000{s}/vid{v}/")):
                parts += [np.zeros(4000, np.int16), pcm[c]]           # 0.25 s gap before each
                t += 4000
                segments[kid[c]] = f"{reco} {t / 16000:.4f} {(t + len(pcm[c])) / 16000:.4f}"
                t += len(pcm[c])
            path = root / "their" / "kaldi_segments" / "reco" / f"{reco}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
            wav_scp[reco] = str(path)
    write_table(d / "wav.scp", wav_scp)
    write_table(d / "segments", segments)
    write_table(d / "utt2spk", {kid[c]: spk_of(c) for c in utts})
    forms["kaldi_segments"] = Form(d, kid, kaldi_trials(root / "their" / "kaldi_segments" / "trials", kid))

    # ESPnet: dump/raw/<set> written by format_wav_scp with ark output (kaldiio's wav-in-ark of
    # (rate, int16) and, as newer ESPnet writes it, soundfile flac), paths relative to the recipe dir
    import kaldiio
    eid = dict(zip(utts, utts))  # ESPnet's VoxCeleb ids: spk/video/utt
    recipe = root / "their" / "espnet" / "egs2" / "vox" / "spk1"
    ark_rel = "dump/raw/org/vox1/data/format.1/data_wav.ark"
    (recipe / ark_rel).parent.mkdir(parents=True)
    d = recipe / "dump" / "raw" / "vox1"
    d.mkdir(parents=True)
    with open(recipe / ark_rel, "wb") as fark, open(d / "wav.scp", "w") as fscp:
        for i, c in enumerate(sorted(utts)):
            if i % 2:
                kaldiio.save_ark(fark, {c: (pcm[c] / 32768.0, 16000)}, scp=fscp, append=True,
                                 write_function="soundfile", write_kwargs={"format": "flac", "subtype": None})
            else:
                kaldiio.save_ark(fark, {c: (16000, pcm[c])}, scp=fscp, append=True)
    (d / "wav.scp").write_text((d / "wav.scp").read_text().replace(str(recipe / ark_rel), ark_rel))
    espnet_tables(d, utts, pcm)
    forms["espnet_ark"] = Form(d, eid, d / "trial.scp")
    # ESPnet: flac files
    recipe = root / "their" / "espnet_flac" / "spk1"
    d = recipe / "dump" / "raw" / "vox1"
    scp = {}
    for c in utts:
        rel_path = f"dump/raw/vox1/data/format.1/{c.replace('/', '-')}.flac"
        (recipe / rel_path).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(recipe / rel_path, pcm[c], 16000, subtype="PCM_16")
        scp[c] = rel_path
    write_table(d / "wav.scp", scp)
    espnet_tables(d, utts, pcm)
    forms["espnet_flac"] = Form(d, eid, None)

    # WeSpeaker: ids are relative paths, trials in data/vox1/trials/*.kaldi
    wid = {c: f"{c}.wav" for c in utts}
    d = root / "their" / "wespeaker" / "data" / "vox1"
    write_table(d / "wav.scp", {wid[c]: wav[c] for c in utts})
    write_table(d / "utt2spk", {wid[c]: spk_of(c) for c in utts})
    forms["wespeaker"] = Form(d, wid, kaldi_trials(d / "trials" / "vox1_O_cleaned.kaldi", wid))

    # unsorted files, and ids that do not start with the speaker (u01 of id00003 ...)
    order = np.random.default_rng(3).permutation(len(utts))
    uid = {c: f"u{order[i]:02d}" for i, c in enumerate(sorted(utts))}
    d = root / "their" / "unsorted" / "data" / "vox1"
    shuffled = [sorted(utts)[i] for i in np.random.default_rng(4).permutation(len(utts))]
    write_lines(d / "wav.scp", [f"{uid[c]} {wav[c]}" for c in shuffled])
    write_lines(d / "utt2spk", [f"{uid[c]} {spk_of(c)}" for c in reversed(shuffled)])
    forms["unsorted"] = Form(d, uid, kaldi_trials(root / "their" / "unsorted" / "trials", uid))

    # 8 kHz telephone-band audio (resampled by us: not comparable sample for sample)
    d = kaldi_dir("rate8k", {c: str(corpus / "wav8k" / f"{c}.wav") for c in utts}, kid)
    kaldi_trials(d / "trials", kid)
    forms["rate8k"] = Form(d, kid, None, lossless=False)
    return forms


def espnet_tables(d: Path, utts, pcm) -> None:
    write_table(d / "utt2spk", {c: spk_of(c) for c in utts})
    write_table(d / "spk2utt", {s: " ".join(sorted(c for c in utts if spk_of(c) == s)) for s in map(spk_of, utts)})
    write_table(d / "utt2num_samples", {c: str(len(pcm[c])) for c in utts})
    (d / "feats_type").write_text("raw\n")
    keys = [f"{a}*{b}" for a, b, _ in canonical_trials()]
    write_lines(d / "trial.scp", [f"{k} {k.split('*')[0]}.wav" for k in keys])   # paths: not read by us
    write_lines(d / "trial2.scp", [f"{k} {k.split('*')[1]}.wav" for k in keys])
    write_lines(d / "trial_label", [f"{k} {int(t)}" for k, (_, _, t) in zip(keys, canonical_trials())])


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()

