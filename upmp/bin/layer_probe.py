"""How much speaker information each hidden state of the upstream carries, from the cached layer
stacks alone (no training): an EER per hidden state and for the average of all of them.

    python -m upmp.bin.layer_probe --train_scp dump/ge2e/voxceleb1_dev/layers.scp \
        --utt2spk data/voxceleb1_dev/utt2spk --trials_scp dump/ge2e/voxceleb1_valid/layers.scp \
        --trials data/voxceleb1_valid/trials --out_dir dump/ge2e/layer_probe [--exp_dirs exp/upmp_ge2e ...]

Each utterance's frames of hidden state l are pooled (mean and standard deviation); cosine scoring
(training mean subtracted) and the PLDA back-end (LDA to min(--lda_dim, speakers - 1) dims) are fitted
on the training stacks and score the trials. The average row pools the uniform mean of all hidden
states (the SUPERB-style average). Writes into --out_dir:
    layer_probe.tsv   layer, eer_cosine, eer_plda (%), mindcf_<p>_cosine, mindcf_<p>_plda, lda_dim,
                      n_train_utts, n_speakers, n_trials: one row per hidden state, then "avg"
    layer_probe.png   the EERs per hidden state
    layer_probe.opts  the inputs and options the tsv was computed with
    layer_probe.tsv.done  the done-record (upmp.done): the inputs' stamps, the options, the files written
The tsv is reused (not computed again) while its record matches: the same inputs as they were, the
same options, the files as written (--force: compute it anyway). With --exp_dirs, each experiment's
model.pt weights are shown next to the probe: <exp>/layer_probe.png beside its layer_usage.png.
On a large training set, --max_utts_per_spk and --max_frames bound the time (reads by offset); the
pooled statistics, (L + 1) x 2D float32 values per utterance, are held in memory (VoxCeleb1 dev with
a Base upstream: about 13 GB, or 2 GB with --max_utts_per_spk 20; a run that would take over half
the RAM is refused before any work).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from upmp.analysis import (PROBE_TSV, layer_probe, layer_usage, plot_layer_probe, read_layer_probe, stack_meta,
                           usage_batch, write_layer_probe)
from upmp.bin.common import make_parser, positive_int, require_files, require_writable, run_main, setup_logging
from upmp.errors import ConfigError
from upmp.fileio import atomic_write_text
from upmp.done import done_path, is_done, snapshot, write_done

logger = logging.getLogger("layer_probe")


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--train_scp", required=True, help="layers.scp of the training set (stage 1)")
    p.add_argument("--utt2spk", required=True, help="speakers of the training set")
    p.add_argument("--trials_scp", required=True, help="layers.scp of the set the trials are for")
    p.add_argument("--trials", required=True, help="Kaldi trials: <utt1> <utt2> target|nontarget")
    p.add_argument("--out_dir", required=True, help="where layer_probe.tsv / .png go")
    p.add_argument("--lda_dim", type=positive_int, default=200, help="PLDA: LDA dims (capped at speakers - 1)")
    p.add_argument("--p_target", type=float, default=0.05, help="minDCF's target prior")
    p.add_argument("--max_frames", type=int, default=0, help=">0: pool only the middle N frames of each utterance")
    p.add_argument("--max_utts_per_spk", type=int, default=0, help=">0: fit on at most N utterances per speaker")
    p.add_argument("--seed", type=int, default=0, help="which utterances --max_utts_per_spk keeps")
    p.add_argument("--force", action="store_true", help="compute the tsv even when it is up to date")
    p.add_argument("--exp_dirs", nargs="*", default=[],
                   help="experiments (with model.pt): <exp>/layer_probe.png, their layer weights beside the probe")
    p.add_argument("--allow_other_upstream", action="store_true",
                   help="--exp_dirs: accept a model trained on another upstream of the same L x D")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    require_files(train_scp=args.train_scp, utt2spk=args.utt2spk, trials_scp=args.trials_scp, trials=args.trials)
    if not 0 < args.p_target < 1:
        raise ConfigError(f"--p_target {args.p_target}: must be in (0, 1)")
    require_writable(args.out_dir)
    models = [load_experiment(Path(exp), args.trials_scp, args.allow_other_upstream) for exp in args.exp_dirs]
    out = Path(args.out_dir)
    tsv, opts_file = out / PROBE_TSV, out / "layer_probe.opts"
    opts = " ".join(f"--{k} {getattr(args, k)}" for k in ("train_scp", "utt2spk", "trials_scp", "trials", "lda_dim",
                                                           "p_target", "max_frames", "max_utts_per_spk", "seed"))
    inputs = [Path(x) for x in (args.train_scp, args.utt2spk, args.trials_scp, args.trials)]
    inputs += [Path(args.train_scp).parent / "layer_stack.json", Path(args.trials_scp).parent / "layer_stack.json"]
    record = (done_path(tsv), inputs, {k: getattr(args, k) for k in ("lda_dim", "p_target", "max_frames",
                                                                     "max_utts_per_spk", "seed")},
              [tsv, out / "layer_probe.png", opts_file], [inputs[1]] + inputs[4:])  # utt2spk, layer_stack.json: content
    if not args.force and is_done(*record):
        rows = read_layer_probe(tsv)
        logger.info("%s is up to date (same inputs, same options), reusing it", tsv)
    else:
        seen = snapshot(record[1], record[4])  # before the inputs are read: one changed meanwhile writes no record
        t0 = time.time()
        rows = layer_probe(args.train_scp, args.utt2spk, args.trials_scp, args.trials, lda_dim=args.lda_dim,
                           p_target=args.p_target, max_frames=args.max_frames,
                           max_utts_per_spk=args.max_utts_per_spk, seed=args.seed)
        out.mkdir(parents=True, exist_ok=True)
        write_layer_probe(rows, tsv)
        plot_layer_probe(rows, out / "layer_probe.png")
        atomic_write_text(opts_file, opts + "\n")
        write_done(*record, seen=seen)  # last: an interrupted run is computed again
        logger.info("probed %d hidden states and their average in %.1f s -> %s", len(rows) - 1, time.time() - t0, tsv)
    for r in rows:
        logger.info("hidden state %-3s EER cosine %6.2f %%  PLDA %6.2f %%", r["layer"], r["eer_cosine"], r["eer_plda"])
    for exp, model in zip(args.exp_dirs, models):
        plot_experiment(Path(exp), model, rows, args.trials_scp)


def load_experiment(exp: Path, stacks_scp: str, allow_other_upstream: bool):
    """<exp>/model.pt, checked against the stacks before any work: it must take them."""
    from upmp.checkpoint import load_model
    from upmp.embeddings import check_stacks_fit
    require_files(exp_dirs=str(exp / "model.pt"))
    model, model_meta = load_model(str(exp / "model.pt"))
    check_stacks_fit(stack_meta(stacks_scp), model_meta, f"{exp / 'model.pt'} and {stacks_scp}", allow_other_upstream)
    return model


def plot_experiment(exp: Path, model, rows, stacks_scp: str) -> None:
    """<exp>/layer_probe.png: the probe and the layers the experiment's model weights (layer_usage on
    a batch of stacks_scp's stacks)."""
    import torch
    meta = stack_meta(stacks_scp)
    usage = layer_usage(model, torch.from_numpy(usage_batch(stacks_scp, meta)))
    seen = meta.layers if meta.layers is not None else list(range(meta.num_layers))  # what the model sees
    backend = model.backend.__class__.__name__
    plot_layer_probe(rows, exp / "layer_probe.png", usage, usage_layers=seen if model.use_hidden0 else seen[1:],
                     model_name=f"{exp.name} ({backend})")
    logger.info("%s: the probe beside the layers its model weights", exp / "layer_probe.png")


if __name__ == "__main__":
    run_main(main)
