"""Backend training: Adam + OneCycle, AAM-softmax, random crops; cached or online inputs;
one process or DistributedDataParallel under torchrun; optional AMP on GPU.

Inputs (one of):
    cached   layer stacks written by stage 1 (train_scp + utt2spk)
    online   a Kaldi data dir: the upstream runs inside the training loop on waveform crops
             (nothing cached; MUSAN / RIR augmentation possible), frozen or, with
             train_conf.finetune_upstream, fine-tuned jointly at optim_conf.upstream_lr.

Writes into exp_dir (rank 0 only under DDP):
    config.yaml, versions.json      resolved config and package versions
    train.log                       log lines (also on stderr)
    train_metrics.tsv, train_curve.png   loss / accuracy / lr per logged step
    tensorboard/                    the same curves (and validation EER) as TensorBoard events
    checkpoints/last.pt             full state, rewritten every ckpt_every steps
    valid_metrics.tsv               validation EER every train_conf.valid_every steps (with a validation list)
    train_summary.json              parameters, training time, selected step, validation EER, inputs
    model.pt                        the backend (with its loss head for large-margin fine-tuning, and
                                    the upstream's weights when fine-tuned) for embedding extraction: the
                                    checkpoint with the best validation EER when validating, else the last one
    model_last.pt                   the last one, when validating
    layer_usage.png                 the layers the trained backend relies on
A run whose checkpoints/last.pt exists resumes from it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from upmp.backends import SpeakerEmbeddingModel
from upmp.config import dump_resolved
from upmp.data.audio import SAMPLE_RATE
from upmp.fileio import atomic_torch_save, atomic_write_text
from upmp.losses import build_loss
from upmp.train.data import LayerStackCrops, StepBatches, WaveformCrops, shard, spanout_frames
from upmp.upstream.layer_stack import LayerStackMeta

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Inputs:
    """Where training and validation data come from (cached stacks or online audio)."""
    train_scp: Optional[str] = None      # cached: layers.scp of the training set
    utt2spk: Optional[str] = None        # cached: its utt2spk
    valid_scp: Optional[str] = None      # cached: layers.scp of the validation set
    train_data_dir: Optional[str] = None  # online: Kaldi data dir of the training set
    valid_data_dir: Optional[str] = None  # online: Kaldi data dir of the validation set
    valid_trials: Optional[str] = None   # Kaldi trials of the validation set (either mode)
    upstream: Optional[str] = None       # online: upstream name (see upmp.upstream.build_upstream)
    upstream_ckpt: Optional[str] = None
    lmft_from: Optional[str] = None      # large-margin fine-tuning: the base model.pt to start from

    @property
    def online(self) -> bool:
        return self.train_data_dir is not None

    def check(self) -> None:
        if self.online == (self.train_scp is not None):
            raise ValueError("give either cached inputs (--train_scp, --utt2spk) or online ones "
                             "(--train_data_dir, --upstream)")
        if self.online and not self.upstream:
            raise ValueError("online training (--train_data_dir) needs --upstream")
        if not self.online and not self.utt2spk:
            raise ValueError("--train_scp needs --utt2spk")
        valid_src = self.valid_data_dir if self.online else self.valid_scp
        other = self.valid_scp if self.online else self.valid_data_dir
        if other:
            raise ValueError("validation data must come in the training mode's form "
                             f"({'--valid_data_dir' if self.online else '--valid_scp'})")
        if bool(valid_src) != bool(self.valid_trials):
            raise ValueError(f"{'--valid_data_dir' if self.online else '--valid_scp'} and --valid_trials go together")


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
    model.finetuned_upstream = state.get("upstream")  # {name, ckpt, state} when fine-tuned, else None
    return model.to(device).eval(), meta


def load_upstream(name: str, ckpt: Optional[str], device, finetuned: Optional[dict] = None):
    """The frozen upstream for extraction: built by name, with fine-tuned weights when given."""
    from upmp.upstream import build_upstream
    upstream = build_upstream(name, ckpt)
    if finetuned is not None:
        if finetuned["name"] != name:
            raise ValueError(f"the model fine-tuned upstream {finetuned['name']!r}, not {name!r}")
        upstream.load_state_dict(finetuned["state"])
    return upstream.to(device).freeze()


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
    """Cosine EER of full-utterance embeddings on a held-out trial list.

    load(utts) -> list of (L, T, D) stacks (from cached arks, or the upstream run on audio),
    called chunk by chunk at every validation, so memory holds one chunk of stacks and the
    embeddings, never the whole set's stacks. Under DDP each rank embeds every world-th
    utterance and rank 0 gathers them and scores; eer() returns None on the other ranks.
    """

    def __init__(self, trials: str, available, source: str, load: Callable[[List[str]], List[np.ndarray]],
                 device, rank: int = 0, world: int = 1, chunk: int = 64):
        from upmp.data.trials import read_kaldi_trials
        self.trials = read_kaldi_trials(trials)
        self.utts = sorted({u for t in self.trials for u in t[:2]})
        missing = [u for u in self.utts if u not in available]
        if missing:
            raise ValueError(f"{trials}: trial utterance {missing[0]!r} is not in {source}")
        self.labels = np.array([t for *_, t in self.trials])
        self.load, self.device, self.rank, self.world, self.chunk = load, device, rank, world, chunk

    def eer(self, model) -> Optional[float]:
        from upmp.embeddings import embed_stacks
        from upmp.metrics import compute_eer
        from upmp.scoring.scorers import CosineScorer, score_trials
        mine = self.utts[self.rank::self.world]
        was_training = model.training
        model.eval()
        emb: Dict[str, np.ndarray] = {}
        for start in range(0, len(mine), self.chunk):
            part = mine[start:start + self.chunk]
            emb.update(zip(part, embed_stacks(model, self.load(part), device=self.device)))
        model.train(was_training)
        if self.world > 1:
            parts: List[Any] = [None] * self.world
            torch.distributed.all_gather_object(parts, emb)
            emb = {u: e for part in parts for u, e in part.items()}
        if self.rank != 0:
            return None
        scores = score_trials(CosineScorer(), emb, self.trials)
        return 100 * compute_eer(scores, self.labels)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the torch / numpy / random global generators at a step of a rank: dropout and
    any global-rng draws (upstream masking, layer drop) are then a function of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class TrainGraph(nn.Module):
    """(upstream) -> span-out -> backend -> loss head, as one module for DDP."""

    def __init__(self, model: SpeakerEmbeddingModel, head: nn.Module, upstream: Optional[nn.Module],
                 spanout: Tuple[float, int, float], seed: int):
        super().__init__()
        self.model, self.head, self.upstream = model, head, upstream
        self.spanout, self.seed = spanout, seed

    def forward(self, x: torch.Tensor, labels: torch.Tensor, step: int, rows: range):
        if self.upstream is not None:  # online: waveform crops (all full length) -> layer stacks
            lens = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
            x, _ = self.upstream(x, lens)
            if self.spanout[0] > 0:
                x = x.clone()
                for row, b in enumerate(rows):
                    drop = spanout_frames(self.seed, step, b, x.shape[-1], *self.spanout)
                    x[row, :, :, torch.from_numpy(drop).to(x.device)] = 0.0
        return self.head(self.model(x), labels)


def _distributed() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _online_stacks(upstream, data, data_dir: str, device) -> Callable[[List[str]], List[np.ndarray]]:
    from upmp.embeddings import upstream_stacks

    def load(utts: List[str]) -> List[np.ndarray]:
        was_training = upstream.training
        upstream.eval()
        stacks = list(upstream_stacks(upstream, data, utts, device, source=f"{data_dir}/wav.scp"))
        upstream.train(was_training)
        return stacks
    return load


def train(cfg: Dict[str, Any], inputs: Inputs, exp_dir: str) -> Path:
    """Train with the config on the inputs (cached or online); returns exp_dir/model.pt."""
    inputs.check()
    rank, world, local_rank = _distributed()
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    handler = _add_file_log(exp) if rank == 0 else None
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    if world > 1:
        from datetime import timedelta
        backend = "nccl" if cfg["train_conf"]["device"].startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # generous: a rank may wait on another's checkpoint writing or validation chunk
        torch.distributed.init_process_group(backend, timeout=timedelta(hours=2))
    try:
        return _train(cfg, inputs, exp, rank, world, local_rank)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _device(name: str, world: int, local_rank: int) -> torch.device:
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train_conf.device {name}: no GPU is visible")
        return torch.device("cuda", local_rank if world > 1 else torch.device(name).index or 0)
    return torch.device(name)


def _train(cfg: Dict[str, Any], inputs: Inputs, exp: Path, rank: int, world: int, local_rank: int) -> Path:
    tc, oc = cfg["train_conf"], cfg["optim_conf"]
    main = rank == 0
    if main:
        dump_resolved(cfg, str(exp))
    if tc.get("num_threads", 0) > 0:
        torch.set_num_threads(tc["num_threads"])
    device = _device(tc["device"], world, local_rank)
    if tc["amp"] not in AMP_DTYPES:
        raise ValueError(f"train_conf.amp must be one of {', '.join(AMP_DTYPES)}, got {tc['amp']!r}")
    amp_dtype = AMP_DTYPES[tc["amp"]]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ValueError("train_conf.amp fp16 needs a GPU (train_conf.device cuda); use bf16 on CPU")
    spanout = (tc["spanout_prob"], tc["spanout_span"], tc["spanout_rate"])
    upstream = None
    if inputs.online:
        augment = None
        if tc["augment"]:  # before the upstream: a bad root fails fast
            from upmp.data.augment import Augmenter
            augment = Augmenter(tc["augment"])
        from upmp.upstream import build_upstream
        upstream = build_upstream(inputs.upstream, inputs.upstream_ckpt).to(device)
        upstream.set_trainable(bool(tc["finetune_upstream"]))
        meta = LayerStackMeta(upstream.num_layers, upstream.dim, upstream.frame_shift, inputs.upstream)
        data = WaveformCrops(inputs.train_data_dir, int(round(tc["crop_seconds"] * SAMPLE_RATE)), tc["batch_size"],
                             cfg["seed"], sampling=tc["sampling"], preload=tc["preload"], augment=augment)
        crop = f"{tc['crop_seconds']} s waveform crops, upstream {inputs.upstream}" + \
            (" fine-tuned" if upstream.trainable else " frozen") + (", augmented" if augment else "")
    else:
        if tc["finetune_upstream"] or tc["augment"]:
            raise ValueError("train_conf.finetune_upstream and train_conf.augment need online training "
                             "(--train_data_dir): cached layer stacks are fixed")
        meta = LayerStackMeta.read(str(Path(inputs.train_scp).parent))
        crop_frames = int(round(tc["crop_seconds"] / meta.frame_shift))
        data = LayerStackCrops(inputs.train_scp, inputs.utt2spk, meta.num_layers, crop_frames, tc["batch_size"],
                               cfg["seed"], preload=tc["preload"], sampling=tc["sampling"],
                               spanout_prob=spanout[0], spanout_span=spanout[1], spanout_rate=spanout[2])
        crop = f"cached crops of {crop_frames} frames"
    rows = shard(tc["batch_size"], rank, world)
    logger.info("training on %d utterances of %d speakers, %s, L=%d D=%d%s", len(data.utts), data.num_speakers,
                crop, meta.num_layers, meta.dim, f", {world} processes" if world > 1 else "")
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, meta).to(device)
    head = build_loss(cfg["loss"], model.embed_dim, data.num_speakers, cfg["loss_conf"]).to(device)
    if inputs.lmft_from:  # before step 0 (a resumed run then loads its own checkpoint)
        from upmp.train.lmft import init_from_model
        init_from_model(model, head, inputs.lmft_from, data.speakers)
    graph = TrainGraph(model, head, upstream, spanout, cfg["seed"])
    if world > 1 and tc["sync_batchnorm"]:  # the same statistics whatever the number of processes
        from upmp.train.sync_bn import convert_batchnorm
        convert_batchnorm(graph)  # before the optimizer is given the parameters
    groups = [{"params": list(model.parameters()) + list(head.parameters()), "lr": oc["lr"]}]
    max_lr = [oc["lr"]]
    if upstream is not None and upstream.trainable:
        groups.append({"params": [p for p in upstream.parameters() if p.requires_grad], "lr": oc["upstream_lr"]})
        max_lr.append(oc["upstream_lr"])
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups, lr=oc["lr"], weight_decay=oc["weight_decay"])
    steps = tc["steps"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=steps, pct_start=oc["pct_start"], anneal_strategy="cos")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("backend %s: %d trainable parameters (without loss head)", cfg["backend"], n_params)

    validator = None
    if inputs.valid_trials and tc["valid_every"] > 0:
        if inputs.online:
            from upmp.data.kaldi_dir import DataDir
            vdata = DataDir.load(inputs.valid_data_dir)
            validator = Validator(inputs.valid_trials, set(vdata.utts), inputs.valid_data_dir,
                                  _online_stacks(upstream, vdata, inputs.valid_data_dir, device), device, rank, world)
        else:
            from upmp.data.kaldi_dir import read_table
            from upmp.upstream.layer_stack import load_stack
            entries = read_table(inputs.valid_scp)
            validator = Validator(inputs.valid_trials, entries, inputs.valid_scp,
                                  lambda utts: [load_stack(entries[u], meta.num_layers) for u in utts], device,
                                  rank, world)
        logger.info("validating every %d steps on %d trials (%s)", tc["valid_every"], len(validator.trials),
                    inputs.valid_trials)
    ckpt_path, best_path = exp / "checkpoints" / "last.pt", exp / "checkpoints" / "best.pt"
    metrics_path, valid_path = exp / "train_metrics.tsv", exp / "valid_metrics.tsv"
    start, train_seconds, best_eer, best_step = 0, 0.0, float("inf"), 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        if upstream is not None and upstream.trainable:
            upstream.load_state_dict(state["upstream"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        train_seconds = state.get("train_seconds", 0.0)
        best_eer, best_step = state.get("best_eer", float("inf")), state.get("best_step", 0)
        logger.info("resumed from %s at step %d", ckpt_path, start)
    if main and (start == 0 or not metrics_path.is_file()):
        atomic_write_text(metrics_path, "step\tloss\taccuracy\tlr\n")
    if validator and main and (start == 0 or not valid_path.is_file()):
        atomic_write_text(valid_path, "step\teer\n")

    def snapshot() -> Dict[str, Any]:
        """The weights model.pt needs: the backend, its loss head (for large-margin fine-tuning),
        and the upstream when fine-tuned."""
        out = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}}
        if upstream is not None and upstream.trainable:
            out["upstream"] = {"name": inputs.upstream, "ckpt": inputs.upstream_ckpt,
                               "state": {k: v.detach().cpu().clone() for k, v in upstream.state_dict().items()}}
        return out

    runner = graph
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            graph, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=upstream is not None and upstream.trainable)
    board = None
    if main:
        from torch.utils.tensorboard import SummaryWriter
        board = SummaryWriter(log_dir=str(exp / "tensorboard"), purge_step=start)  # a resume drops later events
    loader = torch.utils.data.DataLoader(
        StepBatches(data, rank, world), batch_size=None, sampler=range(start, steps),
        num_workers=tc["num_workers"], worker_init_fn=lambda _: torch.set_num_threads(1),
        pin_memory=device.type == "cuda", persistent_workers=False)
    graph.train()
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    t0, window, run_start = time.time(), [], time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", mininterval=5, disable=not main)
    for step, (x, labels) in zip(bar, loader):
        seed = step_seed(cfg["seed"], step, rank)  # dropout and global-rng draws: functions of the step
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        with autocast():
            loss, acc = runner(x.to(device, non_blocking=True), labels.to(device, non_blocking=True), step, rows)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, oc["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        window.append((loss.item(), acc.item()))
        done = step + 1
        if done % tc["log_every"] == 0 or done == steps:
            mean = torch.tensor(np.mean(window, axis=0), dtype=torch.float64)
            if world > 1:
                torch.distributed.all_reduce(mean)
                mean /= world
            mean_loss, mean_acc = mean.tolist()
            lr = scheduler.get_last_lr()[0]
            if main:
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
            eer = validator.eer(model)  # every rank embeds its share; rank 0 scores
        if validator and main and (done % tc["valid_every"] == 0 or done == steps):
            with open(valid_path, "a") as f:
                f.write(f"{done}\t{eer:.4f}\n")
            board.add_scalar("valid/eer", eer, done)
            if eer < best_eer:
                best_eer, best_step = eer, done
                atomic_torch_save(dict(snapshot(), step=done, eer=eer), best_path)
            logger.info("step %d: validation EER %.2f %% (best %.2f %% at step %d)", done, eer, best_eer, best_step)
        if main and (done % tc["ckpt_every"] == 0 or done == steps):
            state = {"model": model.state_dict(), "head": head.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "step": done,
                     "train_seconds": train_seconds + time.time() - run_start,
                     "best_eer": best_eer, "best_step": best_step}
            if upstream is not None and upstream.trainable:
                state["upstream"] = upstream.state_dict()
            atomic_torch_save(state, ckpt_path)
    bar.close()
    out = exp / "model.pt"
    if world > 1:
        torch.distributed.barrier()
    if not main:
        return out
    board.close()
    train_seconds += time.time() - run_start
    final = {"config": cfg, "layer_stack": vars(meta), "speakers": data.speakers, "num_params": n_params,
             "train_seconds": train_seconds, "step": steps, "world_size": world,
             "inputs": {k: v for k, v in vars(inputs).items() if v is not None}}
    if validator:
        atomic_torch_save(dict(final, **snapshot()), exp / "model_last.pt")
        best = torch.load(best_path, map_location="cpu", weights_only=False)
        final.update(step=best["step"], valid_eer=best["eer"], model=best["model"], head=best.get("head"))
        if "upstream" in best:
            final["upstream"] = best["upstream"]
        atomic_torch_save(final, out)
        logger.info("model.pt: step %d, best validation EER %.2f %%", best["step"], best["eer"])
    else:
        atomic_torch_save(dict(final, **snapshot()), out)
    atomic_write_text(exp / "train_summary.json", json.dumps(
        {k: final[k] for k in ("num_params", "train_seconds", "step", "world_size", "inputs")}
        | {"valid_eer": final.get("valid_eer"), "num_speakers": len(data.speakers)}, indent=2) + "\n")
    plot_curve(metrics_path, exp / "train_curve.png")
    from upmp.analysis import layer_usage, plot_layer_usage
    x, _ = data.batch(steps)
    if upstream is not None:
        with torch.no_grad():
            upstream.eval()
            x, _ = upstream(x.to(device), torch.full((x.shape[0],), x.shape[1], device=device))
    usage = layer_usage(model, x.to(device))
    plot_layer_usage(usage, exp / "layer_usage.png", first_layer=0 if cfg["use_hidden0"] else 1)
    logger.info("wrote %s", out)
    return out
