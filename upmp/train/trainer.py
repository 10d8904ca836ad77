"""Backend training on cached layer stacks: Adam + OneCycle, AAM-softmax, random crops.

Writes into exp_dir:
    config.yaml, versions.json      resolved config and package versions
    train.log                       log lines (also on stderr)
    train_metrics.tsv, train_curve.png   loss / accuracy / lr per logged step
    checkpoints/last.pt             full state, rewritten every ckpt_every steps
    model.pt                        the trained backend (no loss head) for embedding extraction
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


def train(cfg: Dict[str, Any], train_scp: str, utt2spk: str, exp_dir: str) -> Path:
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    handler = _add_file_log(exp)
    try:
        return _train(cfg, train_scp, utt2spk, exp)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _train(cfg: Dict[str, Any], train_scp: str, utt2spk: str, exp: Path) -> Path:
    tc, oc = cfg["train_conf"], cfg["optim_conf"]
    dump_resolved(cfg, str(exp))
    if tc.get("num_threads", 0) > 0:
        torch.set_num_threads(tc["num_threads"])
    device = torch.device(tc["device"])
    meta = LayerStackMeta.read(str(Path(train_scp).parent))
    crop_frames = int(round(tc["crop_seconds"] / meta.frame_shift))
    data = LayerStackCrops(train_scp, utt2spk, meta.num_layers, crop_frames, tc["batch_size"],
                           cfg["seed"], preload=tc["preload"])
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

    ckpt_path = exp / "checkpoints" / "last.pt"
    metrics_path = exp / "train_metrics.tsv"
    start, train_seconds = 0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        train_seconds = state.get("train_seconds", 0.0)
        logger.info("resumed from %s at step %d", ckpt_path, start)
    if start == 0 or not metrics_path.is_file():
        atomic_write_text(metrics_path, "step\tloss\taccuracy\tlr\n")

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
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.3f}")
            t0, window = time.time(), []
        if done % tc["ckpt_every"] == 0 or done == steps:
            atomic_torch_save({"model": model.state_dict(), "head": head.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "step": done, "train_seconds": train_seconds + time.time() - run_start}, ckpt_path)
    bar.close()
    out = exp / "model.pt"
    train_seconds += time.time() - run_start
    atomic_torch_save({"model": model.state_dict(), "config": cfg, "layer_stack": vars(meta),
                       "speakers": data.speakers, "num_params": n_params, "train_seconds": train_seconds}, out)
    plot_curve(metrics_path, exp / "train_curve.png")
    from upmp.analysis import layer_usage, plot_layer_usage
    usage = layer_usage(model, data.batch(steps)[0].to(device))
    plot_layer_usage(usage, exp / "layer_usage.png", first_layer=0 if cfg["use_hidden0"] else 1)
    logger.info("wrote %s", out)
    return out
