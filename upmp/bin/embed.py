"""Embed audio with a trained model: files, folders, Kaldi wav.scp files or data dirs.

    upmp-embed --model models/upmp_ge2e a.wav b.flac corpus/ data/test/wav.scp --out emb/
    python -m upmp.bin.embed --model exp/upmp_ge2e data/voxceleb1_test --out emb/ --format npy

--model is a package (upmp.bin.package_model) or an experiment dir. Utterance ids: a file's
name without its extension, in a folder the path below it without the extension
(id10270/x6uYqmx31kE/00001), in a wav.scp / data dir its keys. Writes the embeddings as
stage 3 does (not length-normalised): Kaldi `<out>/xvector.ark` + `xvector.scp` (C-sorted;
kaldiio / Kaldi / WeSpeaker read them), or with --format npy one `<out>/<id>.npy` per utterance.
Resumable: utterances already in <out> are skipped, and every --chunk utterances are written
as they finish, so an interrupted run loses at most one chunk. <out>/embed_info.json records
the model (a SHA-256) and each utterance's input (wav.scp entry, and the path, size and mtime
of its files): an utterance whose input changed is embedded again, and embeddings of another
model in <out> are refused. One run writes an <out> at a time (a lock; a second one is refused).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
from pathlib import Path

import numpy as np

from upmp.bin.common import add_device_args, make_parser, run_main, set_num_threads, setup_logging
from upmp.bin.common import check_device, positive_int, require_writable
from upmp.fileio import write_vectors

logger = logging.getLogger("embed")


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("inputs", nargs="+", help="audio files, folders, wav.scp files or Kaldi data dirs")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=("kaldi", "npy"), default="kaldi")
    p.add_argument("--chunk", type=positive_int, default=64, help="utterances embedded and written at a time")
    p.add_argument("--max_batch_frames", type=positive_int, default=6000, help="backend batch size in frames")
    add_device_args(p)
    return p


class KaldiOutput:
    """xvector.ark/scp; finished chunks go to parts/ until the final merge."""

    def __init__(self, out: Path):
        from upmp.scoring.io import read_vectors
        self.out, self.parts = out, out / "parts"
        self.done = {}
        for scp in [out / "xvector.scp", *sorted(self.parts.glob("*.scp"))]:
            if scp.is_file():
                self.done.update({utt: v for _, utt, v in read_vectors(str(scp))})

    def write_chunk(self, vectors: dict) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        write_vectors(self.parts, f"part{len(list(self.parts.glob('*.scp'))):05d}", vectors)
        self.done.update(vectors)

    def close(self) -> None:
        write_vectors(self.out, "xvector", self.done)
        if self.parts.is_dir():
            for f in self.parts.iterdir():
                f.unlink()
            self.parts.rmdir()


def check_npy_ids(sources: dict, out: Path) -> None:
    """<out>/<id>.npy must stay below --out: an absolute id, a `..` or a link out is refused (one line,
    naming the id and where it came from) before anything is embedded."""
    from upmp.errors import DataDirError
    root = out.resolve()
    for key, source in sources.items():
        p = Path(f"{key}.npy")
        if p.is_absolute() or ".." in p.parts or not (root / p).resolve().is_relative_to(root):
            raise DataDirError(f"{source.where}: utterance id {key!r} would write {key}.npy outside --out {out}; "
                               "with --format npy an id is a path below --out: rename the utterance, or use "
                               "--format kaldi")


class NpyOutput:
    def __init__(self, out: Path):
        self.out = out
        self.done = {str(f.relative_to(out).with_suffix("")) for f in out.rglob("*.npy")}

    def write_chunk(self, vectors: dict) -> None:
        from upmp.fileio import atomic_write_bytes
        import io
        for key, v in vectors.items():
            assert (self.out / f"{key}.npy").resolve().is_relative_to(self.out.resolve()), key  # check_npy_ids
            buf = io.BytesIO()
            np.save(buf, np.asarray(v, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(self.out / f"{key}.npy", buf.getvalue())
            self.done.add(key)

    def close(self) -> None:
        pass


INFO = "embed_info.json"
INFO_FORMAT = "upmp-embed-info"


def model_identity(path: str) -> str:
    """SHA-256 of what raw embeddings depend on: a package's files (package.json lists their
    hashes) and upstream / layer stack / config; an experiment's model.pt (the backend, a
    fine-tuned upstream, the layer-stack layout) and the upstream training recorded. The
    training mean and calibration are not involved in raw embeddings."""
    from upmp.errors import ModelFileError
    from upmp.inference.package import MANIFEST
    p = Path(path)
    h = hashlib.sha256()
    if (p / MANIFEST).is_file():
        raw = (p / MANIFEST).read_bytes()
        try:
            info = json.loads(raw)
            files = {k: v for k, v in info["files"].items() if k != "README.md"}
            raw = json.dumps([files, info["upstream"], info["layer_stack"], info["config"]], sort_keys=True).encode()
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # load_model says what is wrong with it; the bytes still identify it
        h.update(b"package\0" + raw)
        return h.hexdigest()
    model_pt = p if p.is_file() and p.suffix == ".pt" else p / "model.pt"
    if not model_pt.is_file():
        raise ModelFileError(f"{path}: neither a model package ({MANIFEST}) nor an experiment dir with model.pt")
    h.update(b"experiment\0")
    with open(model_pt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    summary = model_pt.parent / "train_summary.json"
    try:
        inputs = json.loads(summary.read_text()).get("inputs", {}) if summary.is_file() else {}
        h.update(json.dumps([inputs.get("upstream"), inputs.get("upstream_ckpt")]).encode())
    except (ValueError, AttributeError):
        pass
    return h.hexdigest()


def input_signature(source) -> dict:
    """An utterance's input as the resume check compares it: the wav.scp entry (+ segment) and
    path, size and mtime of the files it reads (a file, or the files named in a pipe)."""
    entry = source.entry
    sig = {"entry": entry}
    if source.segment is not None:
        sig["segment"] = [source.segment.reco, source.segment.start, source.segment.end]
    if entry.rstrip().endswith("|"):
        try:
            names = [t for t in shlex.split(entry.rstrip()[:-1]) if os.path.isfile(t)]
        except ValueError:  # unbalanced quotes: the entry string alone
            names = []
    else:
        names = [entry]
    files = []
    for name in names:
        try:
            st = os.stat(name)
        except OSError:
            continue
        files.append([os.path.abspath(name), st.st_size, st.st_mtime_ns])
    sig["files"] = files
    return sig


class EmbedInfo:
    """<out>/embed_info.json: {"format", "model": {"path", "sha256"}, "inputs": {utt: signature}}.
    Written whole at the start and the end (atomically); in between each chunk's signatures go
    to embed_info.parts/ before the chunk's embeddings are written."""

    def __init__(self, out: Path):
        self.path, self.parts = out / INFO, out / "embed_info.parts"
        self.model, self.inputs = None, {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.model, self.inputs = data["model"], dict(data["inputs"])
                if not isinstance(self.model.get("sha256"), str):
                    raise TypeError("no model hash")
            except (ValueError, KeyError, TypeError, AttributeError):
                from upmp.errors import OutputError
                raise OutputError(f"{self.path}: unreadable, so the model and inputs of the embeddings in {out} "
                                  "are unknown; use another --out or remove it") from None
        for part in sorted(self.parts.glob("*.json")):
            try:
                self.inputs.update(json.loads(part.read_text()))
            except (ValueError, TypeError):
                pass  # its utterances count as unrecorded: embedded again

    def save(self, model: dict) -> None:
        from upmp.fileio import atomic_write_text
        self.model = model
        atomic_write_text(self.path, json.dumps({"format": INFO_FORMAT, "model": model, "inputs": self.inputs},
                                                indent=0, sort_keys=True) + "\n")

    def record(self, sigs: dict) -> None:
        from upmp.fileio import atomic_write_text
        self.parts.mkdir(exist_ok=True)
        atomic_write_text(self.parts / f"{len(list(self.parts.glob('*.json'))):05d}.json", json.dumps(sigs))
        self.inputs.update(sigs)

    def close(self) -> None:
        self.save(self.model)
        if self.parts.is_dir():
            for f in self.parts.iterdir():
                f.unlink()
            self.parts.rmdir()


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_num_threads(args.num_threads)
    check_device(args.device)
    require_writable(args.out)
    from tqdm import tqdm
    from upmp.inference import gather_audio, load_model
    from upmp.errors import OutputError
    from upmp.fileio import output_lock
    sources = gather_audio(args.inputs)
    identity = {"path": args.model, "sha256": model_identity(args.model)}
    out = Path(args.out).resolve()  # the scp names the ark by absolute path: readable from anywhere
    if args.format == "npy":
        check_npy_ids(sources, out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(args.out, out / ".embed.lock"):  # one writer per --out: no lost chunks, no shared temp names
        writer = KaldiOutput(out) if args.format == "kaldi" else NpyOutput(out)
        info = EmbedInfo(out)
        if writer.done and info.model is None:
            raise OutputError(f"{args.out} holds embeddings without {INFO} (another tool's or an older upmp's): "
                              "their model and inputs are unknown; use another --out or remove it")
        if writer.done and info.model["sha256"] != identity["sha256"]:
            raise OutputError(f"{args.out} holds embeddings of another model ({info.model.get('path')}, sha256 "
                              f"{str(info.model.get('sha256'))[:12]}; --model {args.model} is "
                              f"{identity['sha256'][:12]}); use another --out or remove it")
        sigs = {k: input_signature(v) for k, v in sources.items()}
        changed = [k for k in sources if k in writer.done and info.inputs.get(k) != sigs[k]]
        todo = [k for k in sources if k not in writer.done or info.inputs.get(k) != sigs[k]]
        logger.info("%d utterances, %d already in %s, %d to embed", len(sources), len(sources) - len(todo), out,
                    len(todo))
        if changed:
            logger.info("%d utterances in %s were embedded from another input (another file, or its size or "
                        "mtime changed; e.g. %s): embedding them again", len(changed), out, changed[0])
        if todo:
            model = load_model(args.model, args.device, args.max_batch_frames)
            info.save(identity)
            with tqdm(total=len(todo), desc="embed", unit="utt", mininterval=5) as bar:
                for start in range(0, len(todo), args.chunk):
                    keys = todo[start:start + args.chunk]
                    emb = model.embed_raw([sources[k] for k in keys])
                    info.record({k: sigs[k] for k in keys})
                    writer.write_chunk(dict(zip(keys, emb)))
                    bar.update(len(keys))
        writer.close()
        if info.model is not None:
            info.close()
    logger.info("%d embeddings in %s", len(writer.done),
                out / "xvector.scp" if args.format == "kaldi" else f"{out}/<id>.npy")



if __name__ == "__main__":
    run_main(main)
