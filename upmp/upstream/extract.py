"""Stage 1 as library code: plan which layer stacks to extract, extract them, join the job outputs.

    plan = plan_extraction(data_dir, out_dir, sources, upstream, storage, layers)  # reuse, then what is left
    layer_stacks_done(data_dir, out_dir, upstream, storage, layers)              # complete, or stale and why
    plan = plan_set(data_dir, out_dir, sets, upstream, storage, layers=layers)     # reuse, then what is left
    extract_layer_stacks(extractor, data, out_prefix, storage, layers=layers)     # one job: <prefix>.ark/.scp
    join_layer_stacks(data_dir, out_dir, run_id)                            # layers.scp; orphan arks removed

Layout of a set's dump dir <dump>/<upstream>/<set> (see upmp.data.layer_stacks for the matrices):
    layer_stack.json           L, D, frame shift, upstream name, storage, layers (the hidden states kept)
    reused.scp                 stacks this run takes from earlier runs or other sets (scp lines)
    layers.<run>.<job>.ark     a job's stacks; its scp `layers.<run>.<job>.scp` is renamed into
                               place only when the job has written every utterance, so an scp that
                               exists is complete and an ark without one is the rest of a killed job
    layers.scp                 the join: one line per utterance of data/<set> (atomic)
    layers.scp.done            the done-record (upmp.done), written last: data/<set>'s wav.scp,
                               segments and utt2spk (by content: stage 0 rewrites them unchanged),
                               the stacks' upstream, storage and layers (and the SHA-256 of the
                               weights when files hold them: --upstream_ckpt, hf:<dir>), layers.scp
                               and layer_stack.json as written

A rerun after a kill or a failed job reuses every finished job's stacks and extracts only the
rest; arks that no scp of the dump points into are removed at the join. A set is complete (skipped)
while its record matches; a dump without one (made before the records) is planned again: its own
layers.scp's stacks are reused, no upstream runs, and the join writes the record.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from upmp.data.audio import SAMPLE_RATE, check_finite, load_utterance
from upmp.data.kaldi_dir import DataDir, read_table, write_table
from upmp.done import Verdict, done_path, is_done, snapshot, stamp, write_done
from upmp.errors import DataDirError, DiskFullError, UpstreamError
from upmp.fileio import atomic_write_text
from upmp.safe_load import PICKLE_SUFFIXES
from upmp.data.layer_stacks import META_NAME, LayerStackMeta, LayerStackWriter, batches_by_length

logger = logging.getLogger(__name__)

JOINED_SCP = "layers.scp"
REUSED_SCP = "reused.scp"
PLAN_INPUTS = "plan_inputs.json"  # the data dir's tables as plan_extraction read them (stamps, upmp.done)


def audio_key(data: DataDir, utt: str) -> str:
    """What an utterance's stack is made from: its wav.scp entry and segment."""
    entry, segment = data.wav_entry(utt)
    return entry if segment is None else f"{entry} {segment.start} {segment.end}"


def job_scps(out_dir: Path) -> List[Path]:
    """The finished jobs' scps of a dump dir (layers.<run>.<job>.scp), oldest run first."""
    return sorted(p for p in Path(out_dir).glob("layers.*.scp") if p.name != JOINED_SCP)


def read_meta(directory: Path) -> Optional[LayerStackMeta]:
    return LayerStackMeta.read(str(directory)) if (Path(directory) / META_NAME).is_file() else None


@dataclass
class ExtractionPlan:
    reused: Dict[str, str] = field(default_factory=dict)   # utt -> scp value (ark:offset)
    resumed: int = 0                                         # of those, from this set's own earlier jobs
    todo: List[str] = field(default_factory=list)           # utterances still to extract


def plan_extraction(data_dir: str, out_dir: str, sources: Sequence[str], upstream: str, storage: str,
                    layers: Optional[List[int]] = None, weights: Optional[str] = None) -> ExtractionPlan:
    """Which utterances of data_dir need extracting into out_dir, and which stacks are reused.

    Reused, in this order: this set's own finished job outputs (a killed or failed earlier run)
    and its last layers.scp, when its layer_stack.json has the same upstream, weights (weights_id: a
    checkpoint rewritten under the same name is other weights), storage and layer subset and
    the audio is the one they were made from (none of them when the set's previous done-record names
    another wav.scp or segments: the same ids, other audio; a dump without a record reuses by id); then,
    from the other sets' complete dumps in `sources` (<dump>/<other set>, data/<other set> beside
    data_dir), stacks of the same utterance id made from the same audio (same wav.scp entry and
    segment) with the same upstream, weights, storage and layers. Writes <out_dir>/plan_inputs.json, reused.scp, layer_stack.json
    (when anything is reused) and <out_dir>/todo/ (a Kaldi data dir; absent when nothing is left).
    """
    out = Path(out_dir)
    _, inputs, _, _, hashed = layer_stacks_record(data_dir, out_dir, upstream, storage, layers, weights)
    seen = snapshot(inputs, hashed)  # before the tables are read: join_layer_stacks records them (PLAN_INPUTS)
    data = DataDir.load(data_dir)
    wanted = {u: audio_key(data, u) for u in data.utts}
    plan, meta_from = ExtractionPlan(), None
    own = read_meta(out)
    wanted_kind = (upstream, storage, layers, weights)
    if own is not None and _kind(own) == wanted_kind \
            and not _audio_changed(data_dir, out):
        for scp in job_scps(out) + ([out / JOINED_SCP] if (out / JOINED_SCP).is_file() else []):
            for utt, entry in read_table(scp).items():
                if utt in wanted and utt not in plan.reused and _ark_exists(entry):
                    plan.reused[utt] = entry
        plan.resumed = len(plan.reused)
        if plan.reused:
            meta_from = out
    for src in map(Path, sources):
        src_data = Path(data_dir).parent / src.name
        if src.resolve() == out.resolve() or not (src / JOINED_SCP).is_file() or not src_data.is_dir():
            continue
        meta = read_meta(src)
        if meta is None or _kind(meta) != wanted_kind:
            continue
        scp = read_table(src / JOINED_SCP)
        if len(scp) != len(read_table(src_data / "utt2spk")):
            continue  # an incomplete dump
        other = DataDir.load(src_data)
        for utt, entry in scp.items():
            if utt in wanted and utt not in plan.reused and utt in other.utt2spk \
                    and audio_key(other, utt) == wanted[utt]:
                plan.reused[utt] = entry
                meta_from = meta_from or src
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN_INPUTS, json.dumps(seen, sort_keys=True) + "\n")
    write_table(out / REUSED_SCP, plan.reused)
    if meta_from is not None and meta_from != out:
        shutil.copy(meta_from / META_NAME, out / META_NAME)
    plan.todo = [u for u in data.utts if u not in plan.reused]
    if (out / "todo").exists():
        shutil.rmtree(out / "todo")
    if plan.todo:
        data.subset(plan.todo).write(out / "todo")
    return plan


def _kind(meta: LayerStackMeta) -> tuple:
    """What makes two stacks of the same audio the same: (upstream, storage, layers, weights)."""
    return meta.upstream, meta.storage, meta.layers, meta.weights_sha256


def weights_id(upstream: str, ckpt: Optional[str] = None) -> Optional[str]:
    """The SHA-256 that names an upstream's weights when files hold them (None when its name fixes
    them: S3PRL hub names, ge2e): the checkpoint's bytes for --upstream_ckpt; for hf:<dir>, a digest
    of the names and SHA-256s of its config.json and weight files. Each file is hashed once per process."""
    if ckpt:
        return stamp(ckpt, hashed=True)
    if not upstream.startswith("hf:"):
        return None
    root = Path(upstream[3:])
    files = sorted(f for f in root.rglob("*") if f.is_file() and (f.name == "config.json" or f.suffix.lower()
                   in PICKLE_SUFFIXES + (".safetensors",)))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root)} {stamp(f, hashed=True)}\n".encode())
    return digest.hexdigest()


def layer_stacks_record(data_dir: str, out_dir: str, upstream: str, storage: str, layers: Optional[List[int]],
                        weights: Optional[str] = None):
    """(record, inputs, options, outputs, inputs hashed) of stage 1's done-record for a set (module
    docstring); `weights`: weights_id of the upstream."""
    out = Path(out_dir)
    inputs = [str(Path(data_dir) / n) for n in ("wav.scp", "segments", "utt2spk")]
    options = {"upstream": upstream, "storage": storage, "layers": layers}
    if weights is not None:  # absent otherwise: the records of stacks of hub-named upstreams stay valid
        options["weights_sha256"] = weights
    return done_path(out / JOINED_SCP), inputs, options, [str(out / JOINED_SCP), str(out / META_NAME)], inputs


def layer_stacks_done(data_dir: str, out_dir: str, upstream: str, storage: str,
                      layers: Optional[List[int]] = None, weights: Optional[str] = None) -> Verdict:
    """Whether stage 1's stacks of a set are complete: its record matches data_dir's tables and the
    stacks asked for (upstream, weights, storage, layers); else why not."""
    return is_done(*layer_stacks_record(data_dir, out_dir, upstream, storage, layers, weights))


def plan_set(data_dir: str, out_dir: str, sets: Sequence[str], upstream: str, storage: str,
             sources: Sequence[str] = (), layers: Optional[List[int]] = None,
             weights: Optional[str] = None) -> ExtractionPlan:
    """Stage 1's plan for one set of a run: plan_extraction reusing from `sources` and from the dumps
    of the run's other `sets` (names: <out_dir>/../<set>, their data dirs beside data_dir)."""
    dump = Path(out_dir).parent
    others = [str(dump / s) for s in sets if (dump / s).resolve() != Path(out_dir).resolve()]
    return plan_extraction(data_dir, out_dir, list(sources) + others, upstream, storage, layers, weights)


def num_lines(path: Path) -> int:
    """Newlines in a file (wc -l), 0 when it does not exist."""
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _audio_changed(data_dir: str, out: Path) -> bool:
    """Whether the set's previous done-record (if any) names another wav.scp or segments than data_dir's
    now: its own stacks are then of other audio under the same ids (a changed utt2spk alone is not)."""
    try:
        recorded = json.loads(done_path(out / JOINED_SCP).read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(recorded, dict):  # not a record of ours: nothing to compare with
        return False
    for name in ("wav.scp", "segments"):
        p = os.path.normpath(str(Path(data_dir) / name))
        if p in recorded and recorded[p] != stamp(p, hashed=True):
            logger.info("%s changed since %s: extracting its stacks again", p, done_path(out / JOINED_SCP))
            return True
    return False


def _ark_exists(entry: str) -> bool:
    return Path(entry.rpartition(":")[0]).is_file()


def wav_scp_lines(data_dir: str) -> Dict[str, int]:
    """{wav.scp key: line number} of a data dir (to name the user's line in audio errors)."""
    lines = {}
    with open(Path(data_dir) / "wav.scp", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            key = line.split(maxsplit=1)[0] if line.strip() else None
            if key is not None:
                lines.setdefault(key, lineno)
    return lines


FLOAT16_MAX = 65504.0


def check_stack(mat: np.ndarray, utt: str, upstream: str, storage: str) -> None:
    """A layer stack about to be written holds only finite values that its storage can hold: an
    UpstreamError naming the utterance otherwise (the audio was checked when it was decoded, so
    NaN here comes from the upstream's weights or an overflow)."""
    check_finite(mat, f"utterance {utt}: layer stack of {upstream}",
                 hint="the upstream's weights or its numerics are broken (check the checkpoint; "
                      "--extract_device cpu runs in float32)", error=UpstreamError)
    if storage in ("float16", "int8"):  # int8 keeps each row's offset and scale in float16
        peak = float(np.abs(mat).max()) if mat.size else 0.0
        if peak > FLOAT16_MAX:
            raise UpstreamError(f"utterance {utt}: layer stack of {upstream} reaches {peak:.4g}, beyond float16's "
                                f"{FLOAT16_MAX:.0f}: stored as {storage} it would be inf; use --storage float32")


def extract_layer_stacks(extractor, data: DataDir, out_prefix: str, storage: str = "float32",
                         max_batch_seconds: float = 0.0, chunk_size: int = 256, device: str = "cpu",
                         source_dir: Optional[str] = None, upstream_name: str = "", desc: str = "layers",
                         min_samples: int = 0, strict: bool = True, layers: Optional[List[int]] = None,
                         weights: Optional[str] = None) -> int:
    """All (L, T, D) layer stacks of `data` into <out_prefix>.ark / .scp (and layer_stack.json
    beside them); returns the number of frames written.

    The scp is written under a temporary name and renamed into place only after the last
    utterance, so an existing <out_prefix>.scp is complete. Audio errors name `source_dir`'s
    wav.scp line (the user's data dir, when `data` is a split copy of it); a full disk is one
    DiskFullError naming the directory and the bytes this job had written and still needed.
    max_batch_seconds = 0: one utterance per forward (features independent of batching).
    layers: the upstream's hidden states to keep, ascending (None: all; upmp.data.layer_stacks.parse_layers).
    weights: weights_id of the upstream, recorded in layer_stack.json.
    Audio shorter than min_samples (the upstream's receptive field) is an error when strict
    (training data), a logged warning otherwise (upmp.data.audio.load_utterance).
    """
    from upmp.upstream.source import run_upstream  # here: planning and joining (reuse_layers, join_layers) stay torch-free
    out_dir = Path(out_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    num_layers = len(layers) if layers is not None else extractor.num_layers
    if layers is not None and (not layers or layers[-1] >= extractor.num_layers):
        raise ValueError(f"layers {layers} outside the upstream's {extractor.num_layers} hidden states")
    LayerStackMeta(num_layers, extractor.dim, extractor.frame_shift,
                   upstream_name or getattr(extractor, "name", ""), storage, layers, weights).write(str(out_dir))
    utts = data.utts
    source_lines = wav_scp_lines(source_dir) if source_dir else None
    max_samples = int(max_batch_seconds * SAMPLE_RATE)
    scp, tmp_scp = Path(f"{out_prefix}.scp"), Path(f"{out_prefix}.scp.tmp")
    scp.unlink(missing_ok=True)
    n_frames, n_done, n_tried, tried_bytes = 0, 0, 0, 0
    bytes_per_value = {"float16": 2, "int8": 1 + 4 / extractor.dim}.get(storage, 4)
    try:
        with LayerStackWriter(out_prefix, storage, scp_path=str(tmp_scp)) as writer, \
                tqdm(total=len(utts), desc=desc, mininterval=5) as bar:
            for start in range(0, len(utts), chunk_size):
                chunk = utts[start:start + chunk_size]
                audio = [load_utterance(data, utt, _source_of(data, utt, source_dir, source_lines),
                                        min_samples=min_samples, strict=strict) for utt in chunk]
                for batch in batches_by_length([len(a) for a in audio], max_samples):
                    for i, mat in zip(batch, run_upstream(extractor, [audio[i] for i in batch], device, layers)):
                        t = mat.shape[1]
                        n_tried += 1
                        tried_bytes += t * num_layers * extractor.dim * bytes_per_value
                        check_stack(mat, chunk[i], upstream_name or getattr(extractor, "name", "the upstream"), storage)
                        writer.write(chunk[i], mat)
                        n_frames += t
                        n_done += 1
                    bar.update(len(batch))
    except BaseException as e:
        tmp_scp.unlink(missing_ok=True)  # no scp may name stacks that are not there
        if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        ark = Path(f"{out_prefix}.ark")
        written = ark.stat().st_size if ark.is_file() else 0
        need = (f"; this job needs about {_size(tried_bytes / n_tried * len(utts))} for its {len(utts)} utterances"
                if n_tried else "")
        raise DiskFullError(
            f"{out_dir}: no space left on the device while writing layer stacks ({_size(written)} written to "
            f"{ark}, {n_done} utterances complete{need}); free space there (or give --dumpdir on a larger "
            f"disk, or --storage float16 / compressed) and rerun: finished jobs are kept") from None
    os.replace(tmp_scp, scp)
    logger.info("wrote %d utterances, %d frames, L=%d D=%d to %s", len(utts), n_frames,
                num_layers, extractor.dim, scp)
    return n_frames


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _source_of(data: DataDir, utt: str, source_dir: Optional[str], lines: Optional[Dict[str, int]]) -> str:
    if source_dir is None:
        return "wav.scp"
    key = data.segments[utt].reco if data.segments is not None else utt
    line = lines.get(key) if lines else None
    return f"{source_dir}/wav.scp" + (f":{line}" if line else "")


def join_layer_stacks(data_dir: str, out_dir: str, run_id: Optional[str] = None) -> int:
    """<out_dir>/layers.scp from reused.scp and this run's finished job scps
    (layers.<run_id>.*.scp; every job scp when run_id is None), one line per utterance of data_dir,
    sorted, written atomically; an utterance without a stack is an error naming the job logs.
    Then the arks of out_dir that no scp under the dump root (out_dir's parent) points into are
    removed; the done-record (layer_stacks_record, of the stacks' layer_stack.json) last, none when the
    data dir's tables changed since the plan read them (PLAN_INPUTS: the next run plans again). layers.scp
    keeps its mtime when its lines are those it had (a dump planned again, everything reused).
    Returns the number of stacks."""
    out = Path(out_dir)
    utts = list(read_table(Path(data_dir) / "utt2spk"))
    table = dict(read_table(out / REUSED_SCP)) if (out / REUSED_SCP).is_file() else {}
    for scp in job_scps(out):
        if run_id is None or scp.name.startswith(f"layers.{run_id}."):
            table.update(read_table(scp))
    missing = [u for u in utts if u not in table]
    if missing:
        raise DataDirError(f"{out}: no layer stack for utterance {missing[0]!r} of {data_dir} ({len(missing)} "
                           f"missing): an extraction job failed, see {out}/log/; rerun stage 1 to extract "
                           f"only the missing ones")
    text = "".join(f"{u} {table[u]}\n" for u in sorted(utts))
    joined = out / JOINED_SCP
    if not joined.is_file() or joined.read_text() != text:
        atomic_write_text(joined, text)
    remove_orphan_arks(out)
    meta = read_meta(out)
    if meta is None:
        raise DataDirError(f"{out / META_NAME}: missing; extract the stacks of {data_dir} again (delete {out})")
    try:  # the plan's stamps; none (or an unreadable file): the tables as they are now
        seen = json.loads((out / PLAN_INPUTS).read_text())
    except (OSError, ValueError):
        seen = None
    if not isinstance(seen, dict):
        seen = None
    write_done(*layer_stacks_record(data_dir, out_dir, meta.upstream, meta.storage, meta.layers,
                                    meta.weights_sha256), seen=seen)
    return len(utts)


def remove_orphan_arks(out_dir: Path) -> List[Path]:
    """Remove the arks in out_dir that no scp of the dump (out_dir's parent: every set of this
    upstream) points into; returns them."""
    out = Path(out_dir)
    used = set()
    for scp in out.parent.glob("*/*.scp"):
        for entry in read_table(scp).values():
            used.add(os.path.abspath(entry.rpartition(":")[0]))
    removed = [ark for ark in out.glob("*.ark") if os.path.abspath(ark) not in used]
    for ark in removed:
        ark.unlink()
        logger.info("removed %s: no scp points into it (left by an interrupted job)", ark)
    for tmp in out.glob("layers.*.scp.tmp"):  # a killed job's half-written index
        tmp.unlink()
    return removed
