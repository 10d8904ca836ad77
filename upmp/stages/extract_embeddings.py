"""Stage 3: speaker embeddings of a set from a trained backend, its layer stacks cached by stage 1
or computed here by the model's upstream (upmp.upstream.source). The entry point
upmp.bin.extract_embeddings parses the options and calls extract_embeddings; its docstring lists
the files written.

When it reruns: <out_dir>/xvector.scp.done (upmp.done) records the model file, the stacks (layers.scp
and layer_stack.json) or the data dir's audio tables, the utt2spk, the options that shape the
vectors (upstream, crops) and the files written (the small tables and layer_stack.json by content:
stage 0 and stage 1 rewrite them unchanged when they run again); embeddings_done answers from it (sv.sh asks with
upmp.bin.extract_embeddings --check before it starts a job). A directory without a record is
extracted again (stage 3 is deterministic, its vectors come out the same), except outputs made before
the records that are consistent (every output there, xvector.scp newer than the model with a line per
utterance, model.sha256 naming the model file): they are adopted once, their record written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from upmp.data.kaldi_dir import DataDir, read_table
from upmp.data.layer_stacks import META_NAME, LayerStackMeta
from upmp.done import Verdict, done_path, is_done, snapshot, write_done
from upmp.errors import ConfigError, DataDirError, UpstreamError
from upmp.fileio import atomic_write_text
from upmp.upstream.source import CachedStacks, LayerStackSource, UpstreamStacks

logger = logging.getLogger("extract_embeddings")


def stack_source(model, meta: LayerStackMeta, model_path: str, layers_scp: Optional[str] = None,
                 data_dir: Optional[str] = None, upstream: Optional[str] = None,
                 upstream_ckpt: Optional[str] = None, device: str = "cpu") -> LayerStackSource:
    """The stacks stage 3 embeds: layers_scp (stage 1's, layer_stack.json beside it), or the audio
    of data_dir through the upstream (the model's own when it fine-tuned one), cut to the hidden
    states the model (`meta`) was trained on."""
    finetuned = model.finetuned_upstream
    if layers_scp:
        if finetuned is not None:
            raise UpstreamError(f"{model_path} fine-tuned its upstream ({finetuned['name']}): cached layer stacks "
                                "of the original upstream do not fit it; use --data_dir")
        if not Path(layers_scp).is_file():  # as upmp.bin.common.require_files says it
            raise DataDirError(f"--layers_scp {layers_scp}: no such file")
        stacks_dir = Path(layers_scp).parent
        if not (stacks_dir / META_NAME).is_file():
            raise DataDirError(f"{stacks_dir / META_NAME}: missing beside {layers_scp}; extract layer stacks "
                               f"with upmp.bin.extract_layers (stage 1)")
        return CachedStacks(layers_scp)
    if not upstream and finetuned is None:
        raise ConfigError("--data_dir needs --upstream")
    from upmp.checkpoint import load_upstream
    name = upstream or finetuned["name"]
    ckpt = upstream_ckpt or (finetuned or {}).get("ckpt")
    data = DataDir.load(data_dir)
    extractor = load_upstream(name, ckpt, device, finetuned)
    if meta.layers is not None and meta.layers[-1] < extractor.num_layers:  # the subset the model was trained on
        extractor.keep_layers(meta.layers)
    source = UpstreamStacks(extractor, data_dir, name, device, data=data)
    if finetuned is None and meta.weights_sha256 is not None:  # check_stacks_fit compares the two
        from upmp.upstream.extract import weights_id
        source.meta.weights_sha256 = weights_id(name, ckpt)
    return source


def embeddings_record(model_path: str, out_dir: str, layers_scp: Optional[str] = None,
                      data_dir: Optional[str] = None, upstream: Optional[str] = None,
                      upstream_ckpt: Optional[str] = None, utt2spk: Optional[str] = None,
                      crop_seconds: float = 0.0, num_crops: int = 1
                      ) -> Tuple[Path, List[str], dict, List[str], List[str]]:
    """(record, inputs, options, outputs, inputs hashed) of stage 3's done-record for out_dir (module
    docstring)."""
    out = Path(out_dir)
    if layers_scp:
        hashed = [str(Path(layers_scp).parent / META_NAME)] + ([utt2spk] if utt2spk else [])
        inputs = [layers_scp] + hashed
    else:
        hashed = [str(Path(data_dir) / n) for n in ("wav.scp", "segments", "utt2spk")]
        inputs = hashed + ([upstream_ckpt] if upstream_ckpt else [])
    options = {"upstream": upstream, "upstream_ckpt": upstream_ckpt, "crop_seconds": crop_seconds,
               "num_crops": num_crops}
    outputs = [str(out / n) for n in ("utt2dur", "model.sha256", "xvector.ark", "xvector.scp")]
    if utt2spk or data_dir:
        outputs += [str(out / n) for n in ("spk_xvector.ark", "spk_xvector.scp")]
    return done_path(out / "xvector.scp"), [model_path] + inputs, options, outputs, hashed


def embeddings_done(*args, **kwargs) -> Verdict:
    """Whether stage 3's outputs in out_dir are complete and up to date (embeddings_record's arguments).
    Outputs made before the records are adopted once (the record written) when consistent (_legacy_complete)."""
    record = embeddings_record(*args, **kwargs)
    verdict = is_done(*record)
    if not verdict and not record[0].exists() and _legacy_complete(record, *args, **kwargs):
        write_done(*record)
        logger.info("%s made before done-records; adopted (same model, complete)", record[0].with_suffix(""))
        return Verdict(True)
    return verdict


def _legacy_complete(record, model_path: str, out_dir: str, layers_scp: Optional[str] = None,
                     data_dir: Optional[str] = None, upstream: Optional[str] = None,
                     upstream_ckpt: Optional[str] = None, utt2spk: Optional[str] = None, *rest, **kw) -> bool:
    """Whether out_dir's outputs, written before the records, pass the old rule and are consistent: every
    output there, xvector.scp newer than the model with one line per utterance of the set (its utt2spk),
    and model.sha256 naming the model file's SHA-256 now."""
    from upmp.fileio import file_sha256
    out, scp, model = Path(out_dir), Path(out_dir) / "xvector.scp", Path(model_path)
    table = utt2spk or (str(Path(data_dir) / "utt2spk") if data_dir else layers_scp)
    if not all(Path(p).is_file() for p in record[3]) or not model.is_file() or not table \
            or not Path(table).is_file() or scp.stat().st_mtime_ns <= model.stat().st_mtime_ns:
        return False
    with open(scp) as f, open(table) as g:
        if sum(1 for line in f if line.strip()) != sum(1 for line in g if line.strip()):
            return False
    from upmp.embeddings import read_model_record  # torch: only for outputs that are there
    recorded = read_model_record(out)
    return recorded is not None and recorded[0] == file_sha256(model)


def extract_embeddings(model_path: str, out_dir: str, layers_scp: Optional[str] = None,
                       data_dir: Optional[str] = None, upstream: Optional[str] = None,
                       upstream_ckpt: Optional[str] = None, allow_other_upstream: bool = False,
                       utt2spk: Optional[str] = None, crop_seconds: float = 0.0, num_crops: int = 1,
                       max_batch_frames: int = 6000, chunk_size: int = 256, device: str = "cpu") -> None:
    """Embed every utterance of the source (layers_scp or data_dir) with the model at model_path:
    out_dir/utt2dur, model.sha256, [spk_xvector.ark/scp (utt2spk, or the data dir's)], then
    xvector.ark/scp, then the done-record (embeddings_record) last."""
    from upmp.checkpoint import load_model
    from upmp.embeddings import check_stacks_fit, embed_all, write_embeddings, write_model_record
    record = embeddings_record(model_path, out_dir, layers_scp, data_dir, upstream, upstream_ckpt,
                               utt2spk, crop_seconds, num_crops)
    seen = snapshot(record[1], record[4])  # before the inputs are read: one changed meanwhile writes no record
    model, meta = load_model(model_path, device)
    source = stack_source(model, meta, model_path, layers_scp, data_dir, upstream, upstream_ckpt, device)
    if isinstance(source, UpstreamStacks):
        spk_of = source.data.utt2spk
        fit_source = f"--upstream {source.meta.upstream}" + (f" --upstream_ckpt {upstream_ckpt}" if upstream_ckpt else "")
    else:
        spk_of = read_table(utt2spk) if utt2spk else None
        fit_source = layers_scp
    utts = source.utts
    check_stacks_fit(source.meta, meta, fit_source, allow_other_upstream)
    crop_frames = int(round(crop_seconds / meta.frame_shift)) if crop_seconds > 0 else 0
    frames: Dict[str, int] = {}  # utt -> T of its full stack: utt2dur, a quality measure for QMF calibration

    def stacks_of(chunk: Sequence[str]):
        for utt, stack in zip(chunk, source.stacks(chunk)):
            if stack.shape[1] < model.min_frames:  # e.g. the x-vector TDNN's context: no embedding at all
                raise DataDirError(f"{source.where}: utterance {utt}: {stack.shape[1]} frames, the backend needs "
                                   f"at least {model.min_frames} ({1000 * model.min_frames * meta.frame_shift:.0f} "
                                   "ms); remove the utterance from the data dir")
            frames[utt] = stack.shape[1]
            yield stack

    embeddings = embed_all(model, utts, stacks_of, crop_frames, num_crops, max_batch_frames, device, chunk_size)
    out = Path(out_dir)
    # before xvector.scp, which write_embeddings renames into place last; the done-record follows
    atomic_write_text(out / "utt2dur", "".join(f"{u} {frames[u] * meta.frame_shift:.3f}\n" for u in sorted(frames)))
    write_model_record(out, model_path)  # package_model checks that it packages this model
    write_embeddings(out, embeddings, spk_of)
    write_done(*record, seen=seen)
    logger.info("wrote %d embeddings of dim %d to %s/xvector.scp", len(embeddings), model.embed_dim, out_dir)
