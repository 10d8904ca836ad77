"""A synthetic multi-speaker corpus laid out exactly like VoxCeleb1 on disk.

Real corpora cannot be downloaded here, so the mini recipe speaks its own:
each speaker is a text-to-speech voice (espeak-ng voice + variant + accent,
or a flite voice) with its own pitch, speaking rate and a formant-like shift
(sox `speed` then `pitch` back: the spectral envelope moves, F0 stays), plus a
fixed spectral tilt. Each "session" (VoxCeleb's video) adds its own channel:
band limits, EQ, light reverb and noise at a random SNR. Everything is drawn
from one seed, utterance by utterance, so the corpus is identical whatever the
number of worker processes.

Output (VoxCeleb1 layout, consumed by upmp.recipes.voxceleb.prepare_voxceleb1):
    <root>/wav/<idNNNNN>/<session-id>/<nnnnn>.wav   16 kHz, mono, 16 bit
    <root>/vox1_meta.csv                            speakers and their dev/test set
    <root>/veri_test2.txt                           `1 a.wav b.wav` trials, cross-session targets
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile
from scipy.signal import lfilter

from upmp.data.audio import SAMPLE_RATE, resample
from upmp.data.trials import make_balanced_trials
from upmp.fileio import atomic_write_text

logger = logging.getLogger(__name__)


ESPEAK_ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc", "de", "fr", "es", "it", "nl", "pl", "sv"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
                   "Andy", "Annie", "david", "ed", "john", "linda", "Mike", "paul", "robert",
                   "steph", "norbert", "shelby", "travis", "victor", "Alex", "belinda", "Lee"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]

WORDS = """time person year way day thing man world life hand part child eye woman place work
week case point number group problem fact water room mother area money story month lot
right study book word business issue side kind head house service friend father power hour
game line end member law car city community name president team minute idea kid body
information back parent face others level office door health art war history party result
change morning reason research girl guy moment air teacher force education garden river
window morning evening winter summer market letter music paper table voice light music
travel station village ocean island forest mountain bridge kitchen doctor student
""".split()
VERBS = """saw found took gave told asked left kept brought began wrote heard met paid
sent built bought carried opened closed painted watched followed reached remembered""".split()
ADJS = """old new good small large young long great little high different important early
bright quiet heavy simple strange warm cold empty narrow gentle careful sudden""".split()


@dataclass(frozen=True)
class Speaker:
    spk_id: str
    engine: str          # "espeak" | "flite"
    voice: str           # espeak "<lang>+<variant>" or flite voice name
    pitch: int           # espeak -p (0-99); flite F0 mean in Hz
    rate: int            # espeak -s words/min; flite: duration stretch x100
    formant: float       # sox speed factor compensated by pitch (envelope shift)
    tilt: float          # first-order pre-emphasis coefficient (voice brightness)
    gender: str


@dataclass(frozen=True)
class Session:
    session_id: str
    lowpass: int         # Hz
    highpass: int        # Hz
    eq_freq: int
    eq_gain: float       # dB
    reverb: int          # sox reverberance 0-100 (0 = dry)
    snr_db: float
    noise_color: float   # 0 white .. 0.95 brown-ish (one-pole low-pass)


def _rng(seed: int, *keys) -> np.random.Generator:
    """Independent generator per (seed, keys): results do not depend on job order."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _youtube_like_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    first = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return first[rng.integers(len(first))] + "".join(alphabet[i] for i in rng.integers(len(alphabet), size=10))


def make_speakers(num_speakers: int, seed: int, flite_fraction: float = 0.15) -> List[Speaker]:
    rng = _rng(seed, "speakers")
    n_flite = int(round(num_speakers * flite_fraction))
    engines = ["flite"] * n_flite + ["espeak"] * (num_speakers - n_flite)
    rng.shuffle(engines)
    speakers = []
    for i, engine in enumerate(engines):
        spk_id = f"id{10001 + i:05d}"
        if engine == "espeak":
            variant = ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]
            voice = f"{ESPEAK_ACCENTS[rng.integers(len(ESPEAK_ACCENTS))]}+{variant}"
            gender = "f" if variant.startswith("f") or variant in ("Annie", "linda", "steph", "shelby", "belinda") else "m"
            pitch, rate = int(rng.integers(15, 85)), int(rng.integers(135, 190))
        else:
            voice = FLITE_VOICES[rng.integers(len(FLITE_VOICES))]
            gender = "f" if voice == "slt" else "m"
            pitch = int(rng.integers(150, 230) if gender == "f" else rng.integers(85, 140))
            rate = int(rng.integers(85, 120))
        speakers.append(Speaker(spk_id, engine, voice, pitch, rate,
                                formant=float(rng.uniform(0.88, 1.14)),
                                tilt=float(rng.uniform(-0.3, 0.6)), gender=gender))
    return speakers


def make_sessions(spk: Speaker, num_sessions: int, seed: int) -> List[Session]:
    rng = _rng(seed, "sessions", spk.spk_id)
    sessions = []
    for _ in range(num_sessions):
        sessions.append(Session(
            session_id=_youtube_like_id(rng),
            lowpass=int(rng.choice([3400, 4000, 5500, 7000, 7800])),
            highpass=int(rng.choice([0, 80, 150, 300])),
            eq_freq=int(rng.integers(300, 3500)),
            eq_gain=float(rng.uniform(-8, 8)),
            reverb=int(rng.choice([0, 0, 15, 30, 45])),
            snr_db=float(rng.uniform(8, 30)),
            noise_color=float(rng.choice([0.0, 0.6, 0.9, 0.97])),
        ))
    return sessions


def make_sentence(rng: np.random.Generator, num_words: int) -> str:
    words = []
    while len(words) < num_words:
        words += ["the", ADJS[rng.integers(len(ADJS))], WORDS[rng.integers(len(WORDS))],
                  VERBS[rng.integers(len(VERBS))], "a", WORDS[rng.integers(len(WORDS))]]
        if rng.random() < 0.5:
            words += ["and", "then", "the", WORDS[rng.integers(len(WORDS))]]
    return " ".join(words[:num_words])


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")


def synthesize(spk: Speaker, session: Session, text: str, rng: np.random.Generator,
               max_seconds: float, workdir: str) -> np.ndarray:
    """TTS + speaker colouring + session channel -> float32 samples at 16 kHz."""
    raw, sped, colored = (os.path.join(workdir, f) for f in ("raw.wav", "sped.wav", "col.wav"))
    if spk.engine == "espeak":
        _run(["espeak-ng", "-v", spk.voice, "-p", str(spk.pitch), "-s", str(spk.rate), "-w", raw, text])
    else:
        _run(["flite", "-voice", spk.voice, "--setf", f"int_f0_target_mean={spk.pitch}",
              "--setf", f"duration_stretch={spk.rate / 100:.2f}", "-t", text, "-o", raw])
    # Formant-like shift: play the voice faster by `formant` (pitch, envelope and tempo all
    # scale), then pitch back down with sox (WSOLA keeps the new envelope). The speed-up is
    # done here: sox's `speed` effect crashes on some inputs.
    x, rate = soundfile.read(raw, dtype="float64")
    if x.ndim == 2:
        x = x.mean(axis=1)
    x = resample(x, int(round(rate * spk.formant)), SAMPLE_RATE)
    soundfile.write(sped, x, SAMPLE_RATE, subtype="FLOAT")
    cents = -1200.0 * np.log2(spk.formant)
    effects = ["pitch", f"{cents:.1f}", "rate", str(SAMPLE_RATE),
               "sinc", f"{session.highpass}-{session.lowpass}" if session.highpass else f"-{session.lowpass}",
               "equalizer", str(session.eq_freq), "1.0q", f"{session.eq_gain:.1f}"]
    if session.reverb:
        effects += ["reverb", str(session.reverb), "50", "30"]
    effects += ["trim", "0", f"{max_seconds:.2f}"]
    _run(["sox", "-R", "-q", sped, "-c", "1", "-b", "32", "-e", "floating-point", colored] + effects)
    x, _ = soundfile.read(colored, dtype="float32")  # 16 kHz mono: sox was asked for it
    x = lfilter([1.0, -spk.tilt], [1.0], x).astype(np.float32)
    noise = lfilter([1.0], [1.0, -session.noise_color], rng.standard_normal(len(x))).astype(np.float32)
    p_sig = float(np.mean(x ** 2)) + 1e-12
    p_noise = float(np.mean(noise ** 2)) + 1e-12
    snr = session.snr_db + rng.uniform(-2, 2)
    x = x + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr / 10)))
    return (x * (0.3 / (np.max(np.abs(x)) + 1e-9)) * rng.uniform(0.6, 1.0)).astype(np.float32)


def _make_utterance(job: Tuple[Speaker, Session, int, int, str, float, float]) -> Tuple[str, float]:
    spk, session, index, seed, root, min_s, max_s = job
    rng = _rng(seed, "utt", spk.spk_id, session.session_id, index)
    target = rng.uniform(min_s, max_s)
    words_per_s = (spk.rate / 60.0) if spk.engine == "espeak" else 2.6 / (spk.rate / 100)
    out = Path(root) / "wav" / spk.spk_id / session.session_id / f"{index:05d}.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        num_words = max(5, int(target * words_per_s * 1.15))
        x = synthesize(spk, session, make_sentence(rng, num_words), rng, max_s, tmp)
        while len(x) < min_s * SAMPLE_RATE:  # too short: say more
            num_words += 6
            x = synthesize(spk, session, make_sentence(rng, num_words), rng, max_s, tmp)
    tmp_out = out.with_suffix(".tmp.wav")
    soundfile.write(tmp_out, x, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp_out, out)
    return str(out), len(x) / SAMPLE_RATE


def make_corpus(root: str, num_speakers: int = 48, num_test_speakers: int = 12,
                sessions_per_speaker: int = 3, utts_per_session: int = 4,
                min_seconds: float = 3.0, max_seconds: float = 8.0, seed: int = 0,
                num_workers: int = 2, progress: bool = True) -> Dict[str, int]:
    """Generate the corpus under `root` (replacing it). Returns counts."""
    if num_test_speakers >= num_speakers or num_test_speakers < 2:
        raise ValueError(f"need 2 <= num_test_speakers < num_speakers, got {num_test_speakers} of {num_speakers}")
    for tool in ("espeak-ng", "flite", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found on PATH (run tools/install.sh, it installs the Debian packages)")
    root_p = Path(root)
    if root_p.exists():
        shutil.rmtree(root_p)
    root_p.mkdir(parents=True)
    speakers = make_speakers(num_speakers, seed)
    test_ids = {s.spk_id for s in speakers[-num_test_speakers:]}
    jobs = []
    for spk in speakers:
        sessions = make_sessions(spk, sessions_per_speaker, seed)
        for index in range(1, sessions_per_speaker * utts_per_session + 1):
            session = sessions[(index - 1) // utts_per_session]
            jobs.append((spk, session, index, seed, str(root_p), min_seconds, max_seconds))
    from tqdm import tqdm
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        results = list(tqdm(pool.map(_make_utterance, jobs, chunksize=4), total=len(jobs), mininterval=5,
                            desc="synthesising", disable=not progress))
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for spk in speakers:
        meta.append(f"{spk.spk_id}\tSynth_{spk.engine}_{spk.voice.replace('+', '_')}\t{spk.gender}\t"
                    f"synthetic\t{'test' if spk.spk_id in test_ids else 'dev'}")
    atomic_write_text(root_p / "vox1_meta.csv", "\n".join(meta) + "\n")
    test_jobs = [(spk, session, index) for spk, session, index, *_ in jobs if spk.spk_id in test_ids]
    rel = {f"{spk.spk_id}/{session.session_id}/{index:05d}.wav": (spk.spk_id, session.session_id)
           for spk, session, index in test_jobs}
    trials = make_balanced_trials({r: v[0] for r, v in rel.items()}, seed,
                                  utt2session={r: v[1] for r, v in rel.items()})
    atomic_write_text(root_p / "veri_test2.txt",
                      "".join(f"{int(t)} {a} {b}\n" for a, b, t in trials))
    hours = sum(d for _, d in results) / 3600
    logger.info("synthetic corpus: %d speakers (%d test), %d utterances, %.2f h, %d trials",
                num_speakers, num_test_speakers, len(results), hours, len(trials))
    return {"speakers": num_speakers, "utterances": len(results), "trials": len(trials)}

