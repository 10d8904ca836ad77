"""Use a trained model anywhere: embed, score and verify audio files or arrays.

    import upmp
    model = upmp.load_model("<packaged dir or exp dir>", device="cpu")
    e = model.embed("a.wav")                 # (E,) L2-normalised; arrays (16 kHz float) too
    E = model.embed(["a.wav", "b.wav"])      # (N, E), batched through the backend
    s = model.score("a.wav", "b.wav")        # cosine after subtracting the training-set mean
    r = model.verify("a.wav", "b.wav")       # {"score", "llr", "decision", "threshold"}
    db = model.speakers("speakers/")         # enrolment and identification (upmp.inference.speakers)
    db.enroll("alice", ["a1.wav", "a2.wav"]); db.identify("who.wav")   # {"speaker" or None, "score", "llr", ...}

Scores and decisions are refused (AudioError) for audio too short for one upstream frame (400
samples) or silent (RMS below -80 dBFS); embed() only warns, as stage 3 does.

Audio of any rate and channel count is converted as the recipes convert it (channels
averaged, polyphase resampling to 16 kHz: upmp.data.audio.load_audio). The upstream runs one
utterance per forward, as stage 3 does (padding is not neutral for every upstream); the backend
takes padded batches when it is padding-invariant. The embedding therefore equals stage 3's
(`upmp.bin.extract_embeddings --data_dir`) for the same utterance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from upmp.data.audio import (DECODED_EXTENSIONS, FFMPEG_EXTENSIONS, MIN_SAMPLES, SAMPLE_RATE, check_finite,
                             ffmpeg_entry, load_audio)
from upmp.data.kaldi_dir import Segment
from upmp.errors import AudioError, DataDirError, ModelFileError

Audio = Union[str, Path, np.ndarray, torch.Tensor]
logger = logging.getLogger(__name__)

MAX_CHANNELS = 8  # 7.1 audio; the longer axis of a 2-D array is time
# Below this RMS a signal carries no speech: -80 dBFS is about 3 LSB of 16-bit audio (dither,
# digital silence), while recorded speech sits around -40 to -20 dBFS. GE2E's volume normalisation
# would otherwise amplify such a signal into an embedding that looks like anyone's.
SILENCE_DBFS = -80.0


def array_waveform(audio, name: str = "array") -> np.ndarray:
    """A numpy array or torch tensor of 16 kHz float samples -> float32 (N,) mono (see
    SpeakerModel.waveform for the shapes taken); anything else is one AudioError line."""
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    want = (f"pass float samples in [-1, 1] at {SAMPLE_RATE} Hz as (N,), (C, N) channels first "
            f"(torchaudio.load) or (N, C) channels last (soundfile.read), C <= {MAX_CHANNELS}")
    if not np.issubdtype(x.dtype, np.floating):
        hint = f" (int samples: divide by {2 ** (8 * x.dtype.itemsize - 1)})" if np.issubdtype(x.dtype, np.integer) else ""
        raise AudioError(f"{name}: {x.dtype} array{hint}; {want}")
    if x.size == 0:
        raise AudioError(f"{name}: empty audio (shape {tuple(x.shape)})")
    if x.ndim == 2 and x.shape[0] <= MAX_CHANNELS < x.shape[1]:
        axis = 0               # (C, N)
    elif x.ndim == 2 and x.shape[1] <= MAX_CHANNELS < x.shape[0]:
        axis = 1               # (N, C)
    elif x.ndim == 1:
        axis = None
    else:
        what = "a scalar" if x.ndim == 0 else f"an array of shape {tuple(x.shape)}"
        raise AudioError(f"{name}: {what} is not audio (which axis is time?); {want}")
    check_finite(x, f"{name} (shape {tuple(x.shape)})", "replace those samples")
    if axis is not None:
        x = x.mean(axis=axis)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_checkpoint(path: str):
    """model.pt -> (backend model on the CPU, LayerStackMeta); a missing, corrupt or foreign file is
    one ModelFileError line (upmp.checkpoint)."""
    from upmp.checkpoint import load_model
    return load_model(path, "cpu")


def load_content(path: str, device: str = "cpu") -> Dict[str, Any]:
    """A package dir, an exp dir (after stages 2-3) or an exp dir's model.pt -> package content."""
    from upmp.inference.package import MANIFEST, collect_experiment, read_package
    p = Path(path)
    if (p / MANIFEST).is_file():
        return read_package(str(p))
    if p.is_file() and p.suffix == ".pt":
        return collect_experiment(str(p.parent), model_path=str(p), load_checkpoint=load_checkpoint)
    if (p / "model.pt").is_file():
        return collect_experiment(str(p), load_checkpoint=load_checkpoint)
    raise ModelFileError(f"{path}: neither a model package ({MANIFEST}) nor an experiment dir with model.pt")


class SpeakerModel:
    """A loaded model: the frozen upstream, the backend, the training mean, calibration, threshold."""

    def __init__(self, content: Dict[str, Any], device: str = "cpu", max_batch_frames: int = 6000):
        from upmp.checkpoint import build_model
        from upmp.scoring.scorers import CosineScorer
        from upmp.data.layer_stacks import LayerStackMeta
        info = content["info"]
        self.info, self.device, self.max_batch_frames = info, device, max_batch_frames
        cfg = info["config"]
        self.meta = LayerStackMeta(**info["layer_stack"])
        self.backend = build_model(cfg["backend"], cfg["use_hidden0"], cfg["backend_conf"], self.meta)
        try:
            self.backend.load_state_dict(content["backend"])
        except RuntimeError as e:
            raise ModelFileError(f"backend weights do not fit the config: {str(e).splitlines()[0]}") from None
        self.backend.to(device).eval()
        up = info["upstream"]
        name, source = up["name"], content["upstream_source"]
        if name.startswith("hf:") and source is not None:
            name, ckpt = f"hf:{source}", None
        else:
            ckpt = str(source) if source is not None else None
        from upmp.checkpoint import load_upstream
        finetuned = {"name": name, "state": content["upstream_state"]} if content["upstream_state"] is not None else None
        try:
            self.upstream = load_upstream(name, ckpt, device, finetuned)
        except FileNotFoundError as e:
            raise ModelFileError(f"upstream {up['name']}: {e}") from None
        if self.meta.layers is not None and self.meta.layers[-1] < self.upstream.num_layers:
            self.upstream.keep_layers(self.meta.layers)  # the hidden states the backend was trained on
        if (self.upstream.num_layers, self.upstream.dim) != (self.meta.num_layers, self.meta.dim):
            raise ModelFileError(f"upstream {up['name']} gives L={self.upstream.num_layers} x D={self.upstream.dim}, "
                                 f"the backend expects L={self.meta.num_layers} x D={self.meta.dim}")
        self.scorer = CosineScorer(subtract_mean=True)
        self.scorer.mean = np.asarray(info["mean"], dtype=np.float64)
        self.calibration = info.get("calibration")
        self.threshold = (info.get("threshold") or {}).get("score")

    @property
    def embed_dim(self) -> int:
        return self.backend.embed_dim

    # --- audio -> embeddings ---------------------------------------------------------------
    @staticmethod
    def waveform(audio: Audio, name: str = "") -> np.ndarray:
        """A path (or any wav.scp value: `cmd |`, `x.ark:12`) or an array of 16 kHz float samples
        -> float32 mono 16 kHz. Arrays: (N,); (C, N) channels first, as torchaudio.load returns
        (so (1, N) is one channel); (N, C) channels last, as soundfile.read returns. The channel
        axis is the one of at most MAX_CHANNELS entries while the other is longer; any other
        shape, integer samples, NaN / inf and empty arrays are an AudioError."""
        if isinstance(audio, AudioSource):
            return audio.load()
        if isinstance(audio, (str, Path)):
            return load_audio(str(audio), name=name or str(audio))
        return array_waveform(audio, name or "array")

    def check_speech(self, wav: np.ndarray) -> Optional[str]:
        """Why `wav` gives no meaningful embedding (None when it does): fewer samples than the
        upstream needs for one frame, or no signal (RMS below SILENCE_DBFS)."""
        need = MIN_SAMPLES  # one frame of the wav2vec 2.0 / HuBERT / WavLM CNN, one full STFT window of GE2E
        if len(wav) < need:
            return (f"{len(wav)} samples ({1000 * len(wav) / SAMPLE_RATE:.1f} ms), shorter than the {need} samples "
                    f"({1000 * need / SAMPLE_RATE:.0f} ms) the upstream {self.info['upstream']['name']} needs "
                    "for one frame")
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        if rms < 10 ** (SILENCE_DBFS / 20):
            level = "-inf" if rms == 0 else f"{20 * np.log10(rms):.0f}"
            return f"no speech: the signal is silent (RMS {level} dBFS, below {SILENCE_DBFS:g} dBFS)"
        return None

    def layer_stack(self, wav: np.ndarray) -> np.ndarray:
        """(N,) float32 samples -> (L, T, D) layer stack (one utterance per forward, as stage 3)."""
        from upmp.upstream.source import run_upstream
        return run_upstream(self.upstream, [wav], self.device)[0]

    def embed_raw(self, audios: Sequence[Audio], names: Optional[Sequence[str]] = None,
                  strict: bool = False) -> np.ndarray:
        """(N, E) embeddings as stage 3 writes them to xvector.ark (not normalised). Audio too short
        for the upstream or silent (check_speech) is an AudioError when `strict` (a score or decision
        is asked for), else a logged warning (as stage 3 warns on short test audio)."""
        from upmp.embeddings import embed_stacks
        names = names or [a if isinstance(a, (str, Path)) else a.where if isinstance(a, AudioSource) else f"array {i}"
                          for i, a in enumerate(audios)]  # (not getattr: a torch tensor has a .where method)
        stacks = []
        for a, n in zip(audios, names):
            wav = self.waveform(a, str(n))
            problem = self.check_speech(wav)
            if problem and strict:
                raise AudioError(f"{n}: {problem}; no score or decision is given: give at least a second of speech")
            if problem:
                logger.warning("%s: %s; its embedding is not reliable", n, problem)
            stack = self.layer_stack(wav)
            need = self.backend.min_frames
            if stack.shape[1] < need:  # no embedding at all, not even an unreliable one
                raise AudioError(f"{n}: {len(wav)} samples give {stack.shape[1]} frames of the upstream, the "
                                 f"{self.info['config']['backend']} backend needs at least {need} "
                                 f"({1000 * need * self.meta.frame_shift:.0f} ms); give longer audio")
            stacks.append(stack)
        return embed_stacks(self.backend, stacks, self.max_batch_frames, self.device)

    def embed(self, audio: Union[Audio, List[Audio]], normalize: bool = True) -> np.ndarray:
        """One input -> (E,), a list -> (N, E); L2-normalised unless normalize=False."""
        single = not isinstance(audio, (list, tuple))
        emb = self.embed_raw([audio] if single else list(audio))
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb[0] if single else emb

    # --- scores ----------------------------------------------------------------------------
    def score_embeddings(self, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
        """Raw embeddings (N, E), (N, E) -> (N,) cosine scores after mean subtraction."""
        return self.scorer.score_pairs(self.scorer.prepare(np.atleast_2d(e1)), self.scorer.prepare(np.atleast_2d(e2)))

    def score(self, a: Audio, b: Audio) -> float:
        """Cosine score of two inputs; audio too short or silent is an AudioError (no score)."""
        e = self.embed_raw([a, b], strict=True)
        return float(self.score_embeddings(e[:1], e[1:])[0])

    def llr(self, score: Union[float, np.ndarray]):
        """Calibrated log-likelihood ratio (None without a validation list at packaging)."""
        if not self.calibration:
            return None
        return self.calibration["scale"] * score + self.calibration["offset"]

    def decide(self, score: float) -> Dict[str, Any]:
        llr = self.llr(score)
        return {"score": float(score), "llr": None if llr is None else float(llr),
                "decision": None if self.threshold is None else bool(score >= self.threshold),
                "threshold": self.threshold}

    def verify(self, a: Audio, b: Audio) -> Dict[str, Any]:
        """{"score", "llr" (None when uncalibrated), "decision" (same speaker: score >= the
        validation EER threshold; None without one), "threshold"}."""
        return self.decide(self.score(a, b))

    # --- enrolled speakers -----------------------------------------------------------------
    @property
    def identity(self) -> str:
        """SHA-256 of what the embeddings and scores depend on: the backend's and the upstream's weights
        (state dicts, names, dtypes, shapes, values) and the training-set mean. A package and the
        experiment it was made from have the same identity; retrained or fine-tuned models do not."""
        if getattr(self, "_identity", None) is None:
            import hashlib
            h = hashlib.sha256()
            for part, module in (("backend", self.backend), ("upstream", self.upstream)):
                for key, t in sorted(module.state_dict().items()):
                    t = t.detach().cpu().contiguous()
                    h.update(f"{part}.{key} {t.dtype} {tuple(t.shape)}\n".encode())
                    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            h.update(np.asarray(self.scorer.mean, dtype=np.float64).tobytes())
            self._identity = h.hexdigest()
        return self._identity

    def speakers(self, directory: Union[str, Path]):
        """The speaker database in `directory` (upmp.inference.speakers.SpeakerDatabase): enroll,
        identify, names, remove. Made on the first enrolment; one of another model is refused."""
        from upmp.inference.speakers import SpeakerDatabase
        return SpeakerDatabase(self, directory)


def load_model(path: str, device: str = "cpu", max_batch_frames: int = 6000) -> SpeakerModel:
    """A packaged model dir (upmp.bin.package_model) or an experiment dir -> SpeakerModel."""
    return SpeakerModel(load_content(str(path), device), device, max_batch_frames)


@dataclass
class AudioSource:
    """One utterance to embed: a wav.scp value (+ segment) and where it came from (for errors)."""
    entry: str
    segment: Optional[Segment] = None
    where: str = ""

    def load(self) -> np.ndarray:
        try:
            return load_audio(self.entry, self.segment, name=self.where)
        except AudioError as e:
            raise AudioError(f"{self.where}: {e}") from None


def _file_entry(path: Path) -> str:
    return ffmpeg_entry(path) if path.suffix.lower() in FFMPEG_EXTENSIONS else str(path)


def gather_audio(inputs: Sequence[str]) -> Dict[str, AudioSource]:
    """Audio files, folders (searched recursively for audio files), Kaldi wav.scp files and
    data dirs (wav.scp [+ segments]) -> {utterance id: source}, in input order.

    Ids: a file's name without its extension; in a folder, the path below the folder without
    the extension (VoxCeleb style, id10270/x6uYqmx31kE/00001); in a wav.scp or data dir, its keys.
    Two inputs giving the same id are an error naming both."""
    from upmp.data.kaldi_dir import DataDir, read_table
    out: Dict[str, AudioSource] = {}

    def add(key: str, source: AudioSource) -> None:
        if key in out:
            raise DataDirError(f"{source.where}: utterance id {key!r} is also given by {out[key].where}; "
                               "give the inputs in separate runs or rename one")
        out[key] = source

    for item in inputs:
        p = Path(item)
        if p.is_dir() and (p / "wav.scp").is_file():
            data = DataDir.load(p, validate=False)
            for utt in data.utts:
                entry, segment = data.wav_entry(utt)
                add(utt, AudioSource(entry, segment, f"{p / 'wav.scp'}: utterance {utt}"))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DECODED_EXTENSIONS)
            if not files:
                raise DataDirError(f"{p}: no audio files ({', '.join(DECODED_EXTENSIONS)}) in this folder")
            for f in files:
                add(str(f.relative_to(p).with_suffix("")), AudioSource(_file_entry(f), None, str(f)))
        elif p.is_file() and (p.suffix == ".scp" or p.name == "wav.scp"):
            for key, entry in read_table(p, max_fields=None).items():
                add(key, AudioSource(entry, None, f"{p}: utterance {key}"))
        elif p.is_file():
            add(p.stem, AudioSource(_file_entry(p), None, str(p)))
        else:
            raise DataDirError(f"{p}: no such file or directory")
    return out
