"""Enrolment and identification: a directory of enrolled speakers, used through a loaded model.

    import upmp
    model = upmp.load_model("models/upmp_ge2e")
    db = model.speakers("speakers/")                    # SpeakerDatabase (the directory is made on the first enrol)
    db.enroll("alice", ["alice_1.wav", "alice_2.wav"])  # -> the number of files enrolled
    r = db.identify("who.wav", top_k=3)
    # {"speaker": "alice", or None: unknown speaker (below the threshold), "best": "alice", "score": 0.71,
    #  "llr": 4.2, "decision": True, "threshold": 0.38, "top": [{"speaker", "score", "llr"}, ...]}
    db.identify(["a.wav", "b.wav"])                     # a list -> a list of results
    db.names; db.remove("alice")

A speaker's model is the mean of its files' embeddings as the model scores them (the training-set mean
subtracted, length-normalised), length-normalised again. A test file's score against a speaker is its
cosine with that vector, so with one enrolment file it equals model.score(enrol file, test file): the
package's calibration (llr) and threshold (the validation list's EER threshold) belong to that score.
With several enrolment files the same threshold is used; the decision is "same speaker" when the score
reaches it, and identify answers "unknown speaker" (speaker None) when the best score does not. A model
without a validation list has no threshold: then decision is None and the best speaker is returned.

Layout of the directory (plain files; each written to a temporary file and renamed, the index last,
so an interrupted enrolment leaves the database as it was; one writer at a time, by a lock):
    index.json           format, version, the model that enrolled (SpeakerModel.identity, experiment,
                         upstream, embed_dim), and per speaker its vector file, files and enrolment time
    <speaker>.<id>.npy   the speaker's (E,) float64 vector (numpy .npy, loaded without pickle)
A database enrolled by another model (other weights or training mean) is refused: its vectors live in
another embedding space.
"""
from __future__ import annotations

import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from upmp.errors import ConfigError, DataDirError, ModelFileError
from upmp.fileio import atomic_write_bytes, atomic_write_text, output_lock

FORMAT = "upmp-speaker-db"
FORMAT_VERSION = 1
INDEX = "index.json"
LOCK = ".lock"
NAME = re.compile(r"[^\s/\\.][^\s/\\]*")  # a Kaldi-like speaker id: no blanks or slashes, not a hidden file


class SpeakerDatabase:
    """Enrolled speakers in a directory, for one model (see the module docstring)."""

    def __init__(self, model, directory: Union[str, Path]):
        self.model, self.dir = model, Path(directory)
        self.index = self._read_index()

    # --- reading ------------------------------------------------------------------------------
    @property
    def names(self) -> List[str]:
        return sorted(self.index["speakers"])

    def _model_entry(self) -> Dict[str, Any]:
        info = self.model.info
        return {"identity": self.model.identity, "experiment": info.get("experiment"),
                "upstream": info["upstream"]["name"], "embed_dim": int(self.model.embed_dim)}

    def _read_index(self) -> Dict[str, Any]:
        path = self.dir / INDEX
        if self.dir.exists() and not self.dir.is_dir():
            raise DataDirError(f"{self.dir}: a file, not a speaker database directory")
        if not path.is_file():
            if self.dir.is_dir() and any(p.name != LOCK for p in self.dir.iterdir()):
                raise DataDirError(f"{self.dir}: a non-empty directory without {INDEX}, not a speaker database; "
                                   "give a new or empty directory")
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self._model_entry(), "speakers": {}}
        redo = "enrol the speakers again into a new directory"
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataDirError(f"{path}: not complete JSON ({e}); {redo}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataDirError(f"{path}: not a upmp speaker database index; {redo}")
        if index.get("format_version") != FORMAT_VERSION:
            raise DataDirError(f"{path}: speaker database version {index.get('format_version')}, this upmp reads "
                               f"version {FORMAT_VERSION}; {redo}")
        if not isinstance(index.get("model"), dict) or not isinstance(index.get("speakers"), dict):
            raise DataDirError(f"{path}: no 'model' and 'speakers' objects; {redo}")
        theirs, ours = index["model"], self._model_entry()
        if theirs.get("identity") != ours["identity"]:
            raise ModelFileError(
                f"{path}: these speakers were enrolled with another model (experiment {theirs.get('experiment')}, "
                f"identity {str(theirs.get('identity'))[:12]}), not with this one (experiment {ours['experiment']}, "
                f"identity {ours['identity'][:12]}): its vectors are in another embedding space; use that model, or "
                f"enrol the speakers again with this one into another directory")
        return index

    def vectors(self) -> np.ndarray:
        """(S, E) the speakers' vectors, in the order of `names`."""
        rows = []
        for name in self.names:
            entry = self.index["speakers"][name]
            path = self.dir / str(entry.get("vector") if isinstance(entry, dict) else "")
            redo = f"enrol {name!r} again (upmp-enroll --replace)"
            if path.parent != self.dir or not path.is_file():
                raise DataDirError(f"{self.dir / INDEX}: the vector file of speaker {name!r} ({entry.get('vector')}) "
                                   f"is missing or outside the database; {redo}")
            try:
                v = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataDirError(f"{path}: not a readable .npy vector ({e}); {redo}") from None
            if v.shape != (self.model.embed_dim,) or not np.isfinite(v).all():
                raise DataDirError(f"{path}: expected {self.model.embed_dim} finite values, got shape {v.shape}; "
                                   f"{redo}")
            rows.append(v.astype(np.float64))
        return np.stack(rows) if rows else np.zeros((0, self.model.embed_dim))

    # --- enrolment ----------------------------------------------------------------------------
    def enroll(self, name: str, files: Sequence[Any], replace: bool = False) -> int:
        """Enrol `name` from audio files (paths, wav.scp values, arrays: as SpeakerModel.embed takes);
        returns the number of files. Every file is embedded before anything is written; audio too short
        or silent is an AudioError. A name already enrolled is refused unless `replace`."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"speaker name {name!r}: give one word without blanks or slashes, not starting "
                              f"with '.' (e.g. a Kaldi speaker id)")
        files = [files] if isinstance(files, (str, Path)) or hasattr(files, "shape") else list(files)
        if not files:
            raise ConfigError(f"speaker {name!r}: no enrolment files given")
        if name in self.index["speakers"] and not replace:
            self._refuse_existing(name)
        prepared = self.model.scorer.prepare(self.model.embed_raw(files, strict=True))
        vector = prepared.mean(axis=0)
        vector /= max(np.linalg.norm(vector), 1e-12)
        self.dir.mkdir(parents=True, exist_ok=True)
        with output_lock(self.dir, self.dir / LOCK):
            self.index = self._read_index()  # as another process may have left it
            old = self.index["speakers"].get(name)
            if old is not None and not replace:
                self._refuse_existing(name)
            vector_file = f"{name}.{uuid.uuid4().hex[:8]}.npy"
            buffer = io.BytesIO()
            np.save(buffer, vector, allow_pickle=False)
            atomic_write_bytes(self.dir / vector_file, buffer.getvalue())
            (self.dir / vector_file).chmod(0o644)  # readable like the index (mkstemp makes 0600)
            self.index["speakers"][name] = {
                "vector": vector_file, "num_files": len(files), "enrolled": time.strftime("%Y-%m-%d %H:%M:%S"),
                "files": [_describe(f, i) for i, f in enumerate(files)]}
            self._write_index()
            if isinstance(old, dict) and old.get("vector"):  # replaced: the old vector is no longer listed
                (self.dir / Path(str(old["vector"])).name).unlink(missing_ok=True)
        return len(files)

    def remove(self, name: str) -> None:
        """Remove an enrolled speaker (unknown names are a ConfigError)."""
        with output_lock(self.dir, self.dir / LOCK):
            self.index = self._read_index()
            if name not in self.index["speakers"]:
                raise ConfigError(f"{self.dir}: no speaker {name!r} is enrolled ({len(self.names)} speakers)")
            old = self.index["speakers"].pop(name)
            self._write_index()
            if isinstance(old, dict) and old.get("vector"):
                (self.dir / Path(str(old["vector"])).name).unlink(missing_ok=True)

    def _refuse_existing(self, name: str) -> None:
        entry = self.index["speakers"][name]
        raise ConfigError(f"{self.dir}: speaker {name!r} is already enrolled ({entry.get('num_files')} files, "
                          f"{entry.get('enrolled')}); replace it (--replace, replace=True) or choose another name")

    def _write_index(self) -> None:
        self.index["model"] = self._model_entry()
        atomic_write_text(self.dir / INDEX, json.dumps(self.index, indent=1, sort_keys=True) + "\n")
        (self.dir / INDEX).chmod(0o644)

    # --- identification -----------------------------------------------------------------------
    def identify(self, audio, top_k: int = 1):
        """The best enrolled speaker of one input (a dict, see the module docstring) or of each input
        of a list (a list of dicts); `top` holds the top_k speakers by score."""
        if top_k < 1:
            raise ConfigError(f"top_k {top_k}: give 1 or more")
        if not self.index["speakers"]:
            what = "no speakers enrolled" if self.dir.is_dir() else "no such speaker database"
            raise DataDirError(f"{self.dir}: {what}; enrol speakers first (upmp-enroll --db {self.dir} "
                               f"--speaker <name> <files>)")
        single = not isinstance(audio, (list, tuple))
        inputs = [audio] if single else list(audio)
        names, V = self.names, self.vectors()
        scores = self.model.scorer.prepare(self.model.embed_raw(inputs, strict=True)) @ V.T  # (N, S)
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            best = self.model.decide(float(row[order[0]]))
            llr = self.model.llr(row[order])
            top = [{"speaker": names[j], "score": float(row[j]), "llr": None if llr is None else float(llr[i])}
                   for i, j in enumerate(order)]
            results.append({"speaker": names[order[0]] if best["decision"] is not False else None,
                            "best": names[order[0]], **best, "top": top})
        return results[0] if single else results


def _describe(audio, i: int) -> str:
    """What the index records of an enrolment input: its path or wav.scp entry, or `array <i>`."""
    from upmp.inference import AudioSource
    if isinstance(audio, (str, Path)):
        return str(audio)
    if isinstance(audio, AudioSource):
        return audio.where or audio.entry
    return f"array {i}"
