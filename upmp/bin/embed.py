"""Embed audio with a trained model: files, folders, Kaldi wav.scp files or data dirs.

    upmp-embed --model models/upmp_ge2e a.wav b.flac corpus/ data/test/wav.scp --out emb/
    python -m upmp.bin.embed --model exp/upmp_ge2e data/voxceleb1_test --out emb/ --format npy

--model is a package (upmp.bin.package_model) or an experiment dir. Utterance ids: a file's
name without its extension, in a folder the path below it without the extension
(id10270/x6uYqmx31kE/00001), in a wav.scp / data dir its keys. Writes the embeddings as
stage 3 does (not length-normalised): Kaldi `<out>/xvector.ark` + `xvector.scp` (C-sorted;
kaldiio / Kaldi / WeSpeaker read them), or with --format npy one `<out>/<id>.npy` per utterance.
Resumable: utterances already in <out> are skipped, and every --chunk utterances are written
as they finish, so an interrupted run loses at most one chunk.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from upmp.bin.common import run_main, set_num_threads, setup_logging
from upmp.bin.common import check_device, positive_int, require_writable
from upmp.fileio import named_in_errors

logger = logging.getLogger("embed")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model package dir or experiment dir")
    p.add_argument("inputs", nargs="+", help="audio files, folders, wav.scp files or Kaldi data dirs")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=("kaldi", "npy"), default="kaldi")
    p.add_argument("--chunk", type=positive_int, default=64, help="utterances embedded and written at a time")
    p.add_argument("--max_batch_frames", type=positive_int, default=6000, help="backend batch size in frames")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_threads", type=int, default=2)
    return p


def _write_ark(out: Path, name: str, vectors: dict) -> None:
    """<name>.ark/.scp, C-sorted; both renamed into place (ark first) once complete."""
    import kaldiio
    tmp_ark, tmp_scp = out / f".{name}.ark.tmp", out / f".{name}.scp.tmp"
    try:
        with named_in_errors(out / f"{name}.ark"), kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as w:
            for key in sorted(vectors, key=lambda k: k.encode()):
                w(key, np.asarray(vectors[key], dtype=np.float32))
    except BaseException:  # a full disk: no half-written temp files left taking its space
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)
        raise
    ark = out / f"{name}.ark"
    text = tmp_scp.read_text().replace(str(tmp_ark), str(ark))
    os.replace(tmp_ark, ark)
    tmp_scp.write_text(text)
    os.replace(tmp_scp, out / f"{name}.scp")


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
        _write_ark(self.parts, f"part{len(list(self.parts.glob('*.scp'))):05d}", vectors)
        self.done.update(vectors)

    def close(self) -> None:
        _write_ark(self.out, "xvector", self.done)
        if self.parts.is_dir():
            for f in self.parts.iterdir():
                f.unlink()
            self.parts.rmdir()


class NpyOutput:
    def __init__(self, out: Path):
        self.out = out
        self.done = {str(f.relative_to(out).with_suffix("")) for f in out.rglob("*.npy")}

    def write_chunk(self, vectors: dict) -> None:
        from upmp.fileio import atomic_write_bytes
        import io
        for key, v in vectors.items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(v, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(self.out / f"{key}.npy", buf.getvalue())
            self.done.add(key)

    def close(self) -> None:
        pass


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging()
    set_num_threads(args.num_threads)
    check_device(args.device)
    require_writable(args.out)
    from tqdm import tqdm
    from upmp.inference import gather_audio, load_model
    sources = gather_audio(args.inputs)
    out = Path(args.out).resolve()  # the scp names the ark by absolute path: readable from anywhere
    out.mkdir(parents=True, exist_ok=True)
    writer = KaldiOutput(out) if args.format == "kaldi" else NpyOutput(out)
    todo = [k for k in sources if k not in writer.done]
    logger.info("%d utterances, %d already in %s, %d to embed", len(sources), len(sources) - len(todo), out, len(todo))
    if todo:
        model = load_model(args.model, args.device, args.max_batch_frames)
        with tqdm(total=len(todo), desc="embed", unit="utt", mininterval=5) as bar:
            for start in range(0, len(todo), args.chunk):
                keys = todo[start:start + args.chunk]
                emb = model.embed_raw([sources[k] for k in keys])
                writer.write_chunk(dict(zip(keys, emb)))
                bar.update(len(keys))
    writer.close()
    logger.info("%d embeddings in %s", len(writer.done),
                out / "xvector.scp" if args.format == "kaldi" else f"{out}/<id>.npy")


def cli() -> None:
    """Console-script entry (setup.py): expected errors as one line, like `python -m`."""
    run_main(main)


if __name__ == "__main__":
    run_main(main)
