"""Where the speaker information sits in the layers: what a trained backend weights, and what a
probe of each hidden state finds (the paper's analysis).

Which layers a trained backend relies on, as a PNG (layer_usage.png). Each backend says
what to show (upmp.backends.base.Backend.layer_usage):

- superb_ecapa: the softmax layer weights.
- mhfa: its two softmax layer weightings (keys, values).
- upmp: the VAD's layer-mixing matrices (softmax rows) and the layer attentive
  pooling scores per head, averaged over a batch.
- lap: the layer attentive pooling scores per head.
- ltdnn_d3net, ltdnn_ecapa: the layer attentive pooling scores per head (on the fused blocks' output).
- xvector: the one layer it uses.

The layer probe (issue 24; `python -m upmp.bin.layer_probe`) measures how much speaker information each
hidden state of the cached layer stacks carries, with no training: every utterance's frames of hidden
state l are pooled (mean and standard deviation, (2D,)), a cosine scorer (training mean subtracted)
and the Kaldi PLDA back-end (mean, LDA to min(lda_dim, speakers - 1) dims, length norm, PLDA) are
fitted on the training set, and the trials are scored: an EER per hidden state, and the same for the
SUPERB-style average (the uniform mean of all hidden states, frame by frame, before pooling).

    rows = layer_probe("dump/ge2e/train/layers.scp", "data/train/utt2spk",
                       "dump/ge2e/valid/layers.scp", "data/valid/trials")
    write_layer_probe(rows, "layer_probe.tsv"); plot_layer_probe(rows, "layer_probe.png")
    rows = read_layer_probe("layer_probe.tsv")     # [{"layer": "0" .. "L-1" | "avg", "eer_cosine": %, ...}]
"""
from __future__ import annotations

import io
import logging
import os
import textwrap
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from upmp.data.kaldi_dir import read_table
from upmp.data.layer_stacks import META_NAME, LayerStackMeta, MatrixReader
from upmp.data.layout import btld_to_bdlt, split_layers
from upmp.errors import ConfigError, DataDirError, ScoringError
from upmp.fileio import atomic_write_bytes, atomic_write_text
from upmp.metrics import compute_eer, compute_min_dcf
from upmp.scoring.io import load_trials
from upmp.scoring.scorers import CosineScorer, PLDAScorer, score_trials

logger = logging.getLogger(__name__)


def layer_usage(model, stacks) -> Dict[str, np.ndarray]:
    """Arrays (rows, L) describing layer use, from the model (SpeakerEmbeddingModel) and one
    batch (B, D, L_all, T) of inputs: what its backend's `layer_usage()` reports, in eval mode."""
    import torch  # here, not at the top: the layer probe runs without torch
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            usage = model.layer_usage(stacks)
    finally:
        model.train(was_training)
    return {title: a.detach().float().cpu().numpy() for title, a in usage.items()}


def usage_per_layer(usage: Dict[str, np.ndarray]) -> np.ndarray:
    """One weight per hidden state the backend sees: each array's rows normalised to sum 1 and
    averaged, then the arrays averaged (what `--layers top:K:layer_usage.tsv` ranks)."""
    parts = []
    for a in usage.values():
        a = np.abs(np.asarray(a, dtype=np.float64))
        parts.append((a / np.maximum(a.sum(axis=1, keepdims=True), 1e-12)).mean(axis=0))
    return np.mean(parts, axis=0)


def write_layer_usage_tsv(usage: Dict[str, np.ndarray], tsv: Path, labels: Sequence[int]) -> None:
    """layer_usage.tsv: columns layer (the upstream's hidden-state index), usage (usage_per_layer)."""
    from upmp.fileio import atomic_write_text
    if not usage:
        return
    atomic_write_text(Path(tsv), "layer\tusage\n" + "".join(
        f"{layer}\t{u:.6f}\n" for layer, u in zip(labels, usage_per_layer(usage))))


def plot_layer_usage(usage: Dict[str, np.ndarray], png: Path, first_layer: int = 0,
                     labels: Optional[Sequence[int]] = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not usage:
        return
    fig, axes = plt.subplots(1, len(usage), figsize=(4.2 * len(usage), 3.4), squeeze=False)
    for ax, (title, a) in zip(axes[0], usage.items()):
        im = ax.imshow(a, aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("hidden state")
        names = [str(labels[i]) if labels is not None else str(first_layer + i) for i in range(a.shape[1])]
        ax.set_xticks(range(a.shape[1]), names)
        if a.shape[0] == 1:
            ax.set_yticks([])
        else:
            ax.set_yticks(range(a.shape[0]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- The layer probe: speaker information per hidden state, from the cached stacks alone -----------

PROBE_TSV = "layer_probe.tsv"
AVERAGE = "avg"                       # the row of the SUPERB-style average of all hidden states
PROBE_METHODS = ("cosine", "plda")
PROBE_STORAGE = ("float32", "float16", "compressed")  # what MatrixReader decodes to the stored values


def stack_meta(scp: str) -> LayerStackMeta:
    """The layer_stack.json beside a layers.scp; a missing one is one line naming the scp."""
    try:
        meta = LayerStackMeta.read(str(Path(scp).parent))
    except FileNotFoundError:
        raise DataDirError(f"{scp}: no {META_NAME} beside it; give the layers.scp of a stage-1 layer stack dir "
                           f"(dump/<upstream>/<set>/layers.scp), or extract the layer stacks (stage 1)") from None
    if meta.storage not in PROBE_STORAGE:
        raise DataDirError(f"{scp}: storage {meta.storage} is not read by the layer probe ({', '.join(PROBE_STORAGE)}); "
                           f"extract the stacks with one of those (stage 1 --storage)")
    return meta


def pool_layers(mat: np.ndarray, num_layers: int) -> np.ndarray:
    """A stack matrix (T, L*D) -> (L + 1, 2D) float32: for each hidden state, then for the uniform
    average of all L hidden states (last row), the mean and standard deviation over the frames."""
    x = split_layers(np.asarray(mat, dtype=np.float32), num_layers)  # (T, L, D)
    x = np.concatenate([x, x.mean(axis=1, keepdims=True)], axis=1)                  # (T, L + 1, D)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)], axis=1)


def pooled_stacks(scp: str, entries: Dict[str, str], utts: Sequence[str], meta: LayerStackMeta,
                  max_frames: int = 0, desc: str = "pool") -> np.ndarray:
    """(N, L + 1, 2D) pool_layers of the utterances `utts` of a layers.scp ({utt: entry}), over all
    frames or the middle max_frames (> 0) of each (read by offset, not whole)."""
    from tqdm import tqdm
    reader = MatrixReader([entries[u] for u in utts], source=scp)
    width = meta.num_layers * meta.dim
    for utt, loc in zip(utts, reader.locations):
        if loc.cols != width or loc.rows == 0:
            what = f"matrix width {loc.cols}" if loc.cols != width else "no frames"
            raise DataDirError(f"{scp}: utterance {utt}: {what}, but {META_NAME} says {meta.num_layers} hidden "
                               f"states x {meta.dim} dims per frame; extract the layer stacks again (stage 1)")
    out = np.empty((len(utts), meta.num_layers + 1, 2 * meta.dim), dtype=np.float32)
    try:
        for i in tqdm(range(len(utts)), desc=desc, unit="utt", mininterval=5):
            rows = reader.rows(i)
            n = rows if max_frames <= 0 else min(rows, max_frames)
            out[i] = pool_layers(reader.read_rows(i, (rows - n) // 2, n), meta.num_layers)
    finally:
        reader.close()
    return out


def _train_utts(entries: Dict[str, str], spk_of: Dict[str, str], max_per_spk: int, seed: int) -> List[str]:
    """The training utterances (sorted): all, or max_per_spk (> 0) of each speaker drawn with the seed."""
    utts = sorted(entries)
    if max_per_spk <= 0:
        return utts
    by_spk: Dict[str, List[str]] = {}
    for u in utts:
        by_spk.setdefault(spk_of[u], []).append(u)
    rng = np.random.default_rng(seed)
    keep = set()
    for spk in sorted(by_spk):
        us = by_spk[spk]
        keep.update(us if len(us) <= max_per_spk else [us[j] for j in rng.permutation(len(us))[:max_per_spk]])
    return [u for u in utts if u in keep]


def layer_probe(train_scp: str, utt2spk: str, trials_scp: str, trials: str, lda_dim: int = 200,
                p_target: float = 0.05, max_frames: int = 0, max_utts_per_spk: int = 0,
                seed: int = 0) -> List[dict]:
    """One row per hidden state of the stacks, labelled with the upstream's hidden-state index (the
    stacks' layer_stack.json `layers`: "0", "4", "8", "12" for a --layers 0,4,8,12 stack; "0" .. "L-1"
    when all are stored), then the average of all ("avg"): layer, eer_cosine,
    eer_plda (%), mindcf_<p_target>_cosine / _plda, lda_dim, n_train_utts, n_speakers, n_trials.

    Fitted on the training stacks (speakers from utt2spk), scored on the Kaldi trials whose utterances
    are in trials_scp; see the module docstring. max_frames (> 0): pool only the middle max_frames of
    each utterance; max_utts_per_spk (> 0): fit on at most that many utterances per speaker (drawn
    with the seed): both bound the time on a large training set."""
    train_meta, test_meta = stack_meta(train_scp), stack_meta(trials_scp)
    if (train_meta.num_layers, train_meta.dim) != (test_meta.num_layers, test_meta.dim):
        raise DataDirError(f"{trials_scp}: layer stacks of {test_meta.num_layers} hidden states x {test_meta.dim} "
                           f"dims ({test_meta.upstream}), but {train_scp} has {train_meta.num_layers} x "
                           f"{train_meta.dim} ({train_meta.upstream}); give stacks of one upstream for both sets "
                           f"(stage 1 with the same --upstream)")
    meta = train_meta
    spk_of = read_table(utt2spk)
    train_entries = read_table(train_scp)
    missing = [u for u in train_entries if u not in spk_of]
    if missing:
        raise DataDirError(f"{train_scp}: utterance {missing[0]!r} has no speaker in {utt2spk} ({len(missing)} "
                           f"utterance(s) without one); give the utt2spk of the set the stacks were extracted from")
    utts = _train_utts(train_entries, spk_of, max_utts_per_spk, seed)
    labels = np.array([spk_of[u] for u in utts])
    per_spk = Counter(labels.tolist())
    n_multi = sum(n >= 2 for n in per_spk.values())
    if n_multi < 2:
        raise DataDirError(f"{utt2spk}: the training stacks {train_scp} hold {len(per_spk)} speaker(s), {n_multi} "
                           f"of them with 2 or more utterances; LDA / PLDA need at least 2 such speakers: give "
                           f"the stacks of a multi-speaker training set")
    trial_list = load_trials(trials)
    test_entries = read_table(trials_scp)
    absent = {u for a, b, _ in trial_list for u in (a, b) if u not in test_entries}
    if absent:
        line, utt = next((i + 1, u) for i, (a, b, _) in enumerate(trial_list) for u in (a, b) if u in absent)
        raise DataDirError(f"{trials}:{line}: utterance {utt!r} has no layer stack in {trials_scp} ({len(absent)} "
                           f"trial utterance(s) without one); give the layers.scp of the set the trials are for, "
                           f"or extract its stacks (stage 1)")
    is_target = np.array([t for _, _, t in trial_list])
    if is_target.all() or not is_target.any():
        raise ScoringError(f"{trials}: an EER needs target and nontarget trials, got {int(is_target.sum())} target "
                           f"and {int((~is_target).sum())} nontarget")
    test_utts = sorted({u for a, b, _ in trial_list for u in (a, b)})
    need = (len(utts) + len(test_utts)) * (meta.num_layers + 1) * 2 * meta.dim * 4  # the pooled float32 statistics
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram // 2:
        raise ConfigError(f"{train_scp}: the pooled statistics of {len(utts)} training and {len(test_utts)} trial "
                          f"utterances need {need / 2**30:.1f} GiB, over half this machine's RAM "
                          f"({ram / 2**30:.1f} GiB); fit on fewer with --max_utts_per_spk N")
    X_train = pooled_stacks(train_scp, train_entries, utts, meta, max_frames, desc="pool training stacks")
    X_test = pooled_stacks(trials_scp, test_entries, test_utts, meta, max_frames, desc="pool trial stacks")
    from tqdm import tqdm
    hidden_states = meta.layers if meta.layers is not None else list(range(meta.num_layers))
    rows = []
    for layer in tqdm(range(meta.num_layers + 1), desc="probe layers", unit="layer", mininterval=5):
        row: dict = {"layer": str(hidden_states[layer]) if layer < meta.num_layers else AVERAGE}
        embeddings = dict(zip(test_utts, X_test[:, layer]))
        plda = PLDAScorer(lda_dim=lda_dim).fit(X_train[:, layer], labels)
        for scorer in (CosineScorer(subtract_mean=True).fit(X_train[:, layer]), plda):
            scores = score_trials(scorer, embeddings, trial_list, source=trials_scp)
            row[f"eer_{scorer.name}"] = 100 * compute_eer(scores, is_target)
            row[f"mindcf_{p_target:g}_{scorer.name}"] = compute_min_dcf(scores, is_target, p_target)
        row.update(lda_dim=int(plda.plda.mean.shape[0]), n_train_utts=len(utts), n_speakers=len(per_spk),
                   n_trials=len(trial_list))
        rows.append(row)
    return rows


def _columns(rows: List[dict]) -> List[str]:
    keys = list(rows[0])
    order = ["layer"] + [f"eer_{m}" for m in PROBE_METHODS]
    return order + sorted(k for k in keys if k.startswith("mindcf_")) + [k for k in keys if k not in order
                                                                        and not k.startswith("mindcf_")]


def write_layer_probe(rows: List[dict], path) -> None:
    """layer_probe.tsv (atomically): a header line, then one tab-separated row per hidden state and
    the average; EERs in % (3 decimals), minDCF to 4."""
    cols = _columns(rows)

    def cell(k, v):
        return f"{v:.3f}" if k.startswith("eer_") else f"{v:.4f}" if k.startswith("mindcf_") else str(v)
    atomic_write_text(path, "\t".join(cols) + "\n"
                      + "".join("\t".join(cell(k, r[k]) for k in cols) + "\n" for r in rows))


def read_layer_probe(path) -> List[dict]:
    """The rows of a layer_probe.tsv (numbers as float / int, layer as written); a file that is not
    one is one line naming it and the line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("layer\teer_cosine\teer_plda"):
        raise DataDirError(f"{path}:1: not a layer_probe.tsv (expected the header 'layer<TAB>eer_cosine<TAB>"
                           f"eer_plda ...'); run upmp.bin.layer_probe to write it")
    cols = lines[0].split("\t")
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        try:
            if len(fields) != len(cols):
                raise ValueError(f"{len(fields)} fields, the header has {len(cols)}")
            rows.append({k: v if k == "layer" else (int(v) if k.startswith("n_") or k == "lda_dim" else float(v))
                         for k, v in zip(cols, fields)})
        except ValueError as e:
            raise DataDirError(f"{path}:{lineno}: {e}; run upmp.bin.layer_probe to write it again") from None
    return rows


def plot_layer_probe(rows: List[dict], png, usage: Optional[Dict[str, np.ndarray]] = None,
                     usage_layers: Optional[Sequence[int]] = None, model_name: str = "") -> None:
    """The probe's EER per hidden state (cosine, PLDA; dashed: the average of all hidden states), and
    with `usage` (layer_usage of a trained model, its columns the hidden states `usage_layers`, upstream
    indices; default those of the probe's rows) one panel per entry below it: the weight each hidden
    state gets (mean over the rows), on the same axis. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    usage = usage or {}
    layers = [r for r in rows if r["layer"] != AVERAGE]
    average = next((r for r in rows if r["layer"] == AVERAGE), None)
    x = np.array([int(r["layer"]) for r in layers])
    fig, axes = plt.subplots(1 + len(usage), 1, figsize=(max(6.0, 0.4 * len(x) + 3), 2.6 * (1 + len(usage))),
                             squeeze=False)
    ax = axes[0, 0]
    for method, marker in zip(PROBE_METHODS, "os"):
        key = f"eer_{method}"
        (line,) = ax.plot(x, [r[key] for r in layers], marker=marker, label=method)
        if average is not None:
            ax.axhline(average[key], color=line.get_color(), linestyle="--", linewidth=0.9,
                       label=f"{method}, average of all hidden states")
    ax.set_ylabel("probe EER (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("speaker information per hidden state (lower EER: more)", fontsize=9)
    ax.legend(fontsize=7)
    for ax, (title, a) in zip(axes[1:, 0], usage.items()):
        weight = np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1]).mean(axis=0)
        where = np.asarray(x if usage_layers is None else usage_layers)
        aligned = len(where) == len(weight)  # one column per hidden state the model sees
        ax.bar(where if aligned else np.arange(len(weight)), weight, color="tab:green")
        mean_of = " (mean of rows)" if np.ndim(a) > 1 and np.shape(a)[0] > 1 else ""
        place = "" if aligned else f" ({len(weight)} columns, not hidden states)"
        ax.set_title(textwrap.fill(f"{model_name + ': ' if model_name else ''}{title}{mean_of}{place}", 70),
                     fontsize=8)
        ax.set_ylabel("layer usage")
    for ax in axes[:, 0]:
        ax.set_xticks(x, [str(i) for i in x])
        ax.set_xlim(x.min() - 0.6, x.max() + 0.6)
    axes[-1, 0].set_xlabel("hidden state")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())


def usage_batch(scp: str, meta: LayerStackMeta, n: int = 16, max_frames: int = 400) -> np.ndarray:
    """A batch (B, D, L, T) float32 of the n longest utterances of a layers.scp, each cut to the
    shortest of them (at most max_frames frames, the middle ones): the input layer_usage needs."""
    entries = read_table(scp)
    utts = sorted(entries)
    reader = MatrixReader([entries[u] for u in utts], source=scp)
    try:
        longest = sorted(range(len(utts)), key=lambda i: (-reader.rows(i), i))[:n]
        T = min([max_frames] + [reader.rows(i) for i in longest])
        mats = [reader.read_rows(i, (reader.rows(i) - T) // 2, T) for i in longest]
    finally:
        reader.close()
    x = split_layers(np.stack(mats).astype(np.float32), meta.num_layers, meta.dim)  # (B, T, L, D)
    return np.ascontiguousarray(btld_to_bdlt(x))
