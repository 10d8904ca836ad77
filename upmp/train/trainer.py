"""Backend training on cached layer stacks: Adam + OneCycle, AAM-softmax, random crops.

Writes into exp_dir:
    config.yaml, versions.json      resolved config and package versions
    train.log                       log lines (also on stderr)
    train_metrics.tsv, train_curve.png   loss / accuracy / lr per logged step
    tensorboard/                    the same curves (and validation EER) as TensorBoard events
    checkpoints/last.pt             full state, rewritten every ckpt_every steps
    valid_metrics.tsv               validation EER every train_conf.valid_every steps (with a validation list)
    model.pt                        the backend (no loss head) for embedding extraction: the checkpoint
                                    with the best validation EER when validating, else the last one
    model_last.pt                   the last one, when validating
A run whose checkpoints/last.pt exists resumes from it.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from tqdm import tqdm

from upmp.backends import SpeakerEmbeddingModel
from upmp.config import dump_resolved
from upmp.data.kaldi_dir import atomic_write_text
from upmp.losses import build_loss
from upmp.train.data import LayerStackCrops
from upmp.upstream.layer_stack import LayerStackMeta

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_model(cfg: Dict[str, Any], meta: LayerStackMeta) -> SpeakerEmbeddingModel:
    return SpeakerEmbeddingModel(cfg["backend"], meta.dim, meta.num_layers,
                                 use_hidden0=cfg["use_hidden0"], backend_conf=cfg["backend_conf"])


def load_model(path: str, device: str = "cpu") -> Tuple[SpeakerEmbeddingModel, LayerStackMeta]:
    """model.pt (written by train) -> (eval-mode model on device, layer-stack layout it expects)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: model not found; train it first (stage 2)")
    state = torch.load(path, map_location=device, weights_only=False)
    meta = LayerStackMeta(**state["layer_stack"])
    model = build_model(state["config"], meta)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


def _add_file_log(exp_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(exp_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def plot_curve(tsv: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = np.loadtxt(tsv, skiprows=1, ndmin=2)
    if rows.size == 0:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(rows[:, 0], rows[:, 1])
    a1.set_xlabel("step")
    a1.set_ylabel("AAM-softmax loss")
    a2.plot(rows[:, 0], rows[:, 2] * 100)
    a2.set_xlabel("step")
    a2.set_ylabel("train accuracy (%)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


class Validator:
    """Cosine EER of full-utterance embeddings on a held-out trial list (cached stacks)."""

    def __init__(self, scp: str, trials: str, num_layers: int, device):
        from upmp.data.kaldi_dir import read_table
        from upmp.data.trials import read_kaldi_trials
        from upmp.upstream.layer_stack import load_stack
        self.trials = read_kaldi_trials(trials)
        entries = read_table(scp)
        needed = sorted({u for t in self.trials for u in t[:2]})
        missing = [u for u in needed if u not in entries]
        if missing:
            raise ValueError(f"{trials}: trial utterance {missing[0]!r} has no layer stack in {scp}")
        self.utts = needed
        self.stacks = [load_stack(entries[u], num_layers) for u in needed]
        self.labels = np.array([t for *_, t in self.trials])
        self.device = device

    def eer(self, model) -> float:
        from upmp.embeddings import embed_stacks
        from upmp.metrics import compute_eer
        from upmp.scoring.scorers import CosineScorer, score_trials
        was_training = model.training
        model.eval()
        emb = embed_stacks(model, self.stacks, device=self.device)
        model.train(was_training)
        scores = score_trials(CosineScorer(), dict(zip(self.utts, emb)), self.trials)
        return 100 * compute_eer(scores, self.labels)


def train(cfg: Dict[str, Any], train_scp: str, utt2spk: str, exp_dir: str,
          valid_scp: str = None, valid_trials: str = None) -> Path:
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    handler = _add_file_log(exp)
    try:
        return _train(cfg, train_scp, utt2spk, exp, valid_scp, valid_trials)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _train(cfg: Dict[str, Any], train_scp: str, utt2spk: str, exp: Path, valid_scp, valid_trials) -> Path:
    tc, oc = cfg["train_conf"], cfg["optim_conf"]
    dump_resolved(cfg, str(exp))
    if tc.get("num_threads", 0) > 0:
        torch.set_num_threads(tc["num_threads"])
    device = torch.device(tc["device"])
    meta = LayerStackMeta.read(str(Path(train_scp).parent))
    crop_frames = int(round(tc["crop_seconds"] / meta.frame_shift))
    data = LayerStackCrops(train_scp, utt2spk, meta.num_layers, crop_frames, tc["batch_size"],
                           cfg["seed"], preload=tc["preload"], sampling=tc["sampling"],
                           spanout_prob=tc["spanout_prob"], spanout_span=tc["spanout_span"],
                           spanout_rate=tc["spanout_rate"])
    logger.info("training on %d utterances of %d speakers, crops of %d frames, L=%d D=%d",
                len(data.utts), data.num_speakers, crop_frames, meta.num_layers, meta.dim)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, meta).to(device)
    head = build_loss(cfg["loss"], model.embed_dim, data.num_speakers, cfg["loss_conf"]).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=oc["lr"], weight_decay=oc["weight_decay"])
    steps = tc["steps"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=oc["lr"], total_steps=steps, pct_start=oc["pct_start"], anneal_strategy="cos")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("backend %s: %d trainable parameters (without loss head)", cfg["backend"], n_params)

    validator = None
    if valid_scp and valid_trials and tc["valid_every"] > 0:
        validator = Validator(valid_scp, valid_trials, meta.num_layers, device)
        logger.info("validating every %d steps on %d trials (%s)", tc["valid_every"], len(validator.trials),
                    valid_trials)
    ckpt_path, best_path = exp / "checkpoints" / "last.pt", exp / "checkpoints" / "best.pt"
    metrics_path, valid_path = exp / "train_metrics.tsv", exp / "valid_metrics.tsv"
    start, train_seconds, best_eer, best_step = 0, 0.0, float("inf"), 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        train_seconds = state.get("train_seconds", 0.0)
        best_eer, best_step = state.get("best_eer", float("inf")), state.get("best_step", 0)
        logger.info("resumed from %s at step %d", ckpt_path, start)
    if start == 0 or not metrics_path.is_file():
        atomic_write_text(metrics_path, "step\tloss\taccuracy\tlr\n")
    if validator and (start == 0 or not valid_path.is_file()):
        atomic_write_text(valid_path, "step\teer\n")

    from torch.utils.tensorboard import SummaryWriter
    board = SummaryWriter(log_dir=str(exp / "tensorboard"), purge_step=start)  # a resume drops later events
    model.train()
    head.train()
    t0, window, run_start = time.time(), [], time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", mininterval=5)
    for step in bar:
        torch.manual_seed(cfg["seed"] * 1_000_003 + step)  # dropout: a function of the step
        stacks, labels = data.batch(step)
        loss, acc = head(model(stacks.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, oc["grad_clip"])
        optimizer.step()
        scheduler.step()
        window.append((loss.item(), acc.item()))
        done = step + 1
        if done % tc["log_every"] == 0 or done == steps:
            mean_loss, mean_acc = np.mean(window, axis=0)
            lr = scheduler.get_last_lr()[0]
            logger.info("step %d/%d loss %.4f acc %.3f lr %.2e (%.2f s/step)", done, steps, mean_loss,
                        mean_acc, lr, (time.time() - t0) / len(window))
            with open(metrics_path, "a") as f:
                f.write(f"{done}\t{mean_loss:.5f}\t{mean_acc:.5f}\t{lr:.6g}\n")
            board.add_scalar("train/loss", mean_loss, done)
            board.add_scalar("train/accuracy", mean_acc, done)
            board.add_scalar("train/lr", lr, done)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.3f}")
            t0, window = time.time(), []
        if validator and (done % tc["valid_every"] == 0 or done == steps):
            eer = validator.eer(model)
            with open(valid_path, "a") as f:
                f.write(f"{done}\t{eer:.4f}\n")
            board.add_scalar("valid/eer", eer, done)
            if eer < best_eer:
                best_eer, best_step = eer, done
                atomic_torch_save({"model": model.state_dict(), "step": done, "eer": eer}, best_path)
            logger.info("step %d: validation EER %.2f %% (best %.2f %% at step %d)", done, eer, best_eer, best_step)
        if done % tc["ckpt_every"] == 0 or done == steps:
            atomic_torch_save({"model": model.state_dict(), "head": head.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "step": done, "train_seconds": train_seconds + time.time() - run_start,
                               "best_eer": best_eer, "best_step": best_step}, ckpt_path)
    bar.close()
    board.close()
    out = exp / "model.pt"
    train_seconds += time.time() - run_start
    final = {"config": cfg, "layer_stack": vars(meta), "speakers": data.speakers, "num_params": n_params,
             "train_seconds": train_seconds, "step": steps}
    if validator:
        atomic_torch_save(dict(final, model=model.state_dict()), exp / "model_last.pt")
        best = torch.load(best_path, map_location="cpu", weights_only=False)
        final.update(step=best["step"], valid_eer=best["eer"])
        atomic_torch_save(dict(final, model=best["model"]), out)
        logger.info("model.pt: step %d, best validation EER %.2f %%", best["step"], best["eer"])
    else:
        atomic_torch_save(dict(final, model=model.state_dict()), out)
    plot_curve(metrics_path, exp / "train_curve.png")
    from upmp.analysis import layer_usage, plot_layer_usage
    usage = layer_usage(model, data.batch(steps)[0].to(device))
    plot_layer_usage(usage, exp / "layer_usage.png", first_layer=0 if cfg["use_hidden0"] else 1)
    logger.info("wrote %s", out)
    return out
