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
    train_metrics.tsv, train_curve.png   loss / accuracy / lr / AAM margin per logged step
    tensorboard/                    the same curves (and validation EER) as TensorBoard events
    checkpoints/last.pt             full state, rewritten every ckpt_every steps
    checkpoints/step_<N>.pt         with train_conf.keep_checkpoints K or train_conf.average: the weights at
                                    each checkpoint / validation step, the last K and best K kept
    valid_metrics.tsv               validation EER every train_conf.valid_every steps (with a validation list)
    train_summary.json              parameters, training time, selected step, validation EER, inputs
    model.pt                        the backend (with its loss head for large-margin fine-tuning, and
                                    the upstream's weights when fine-tuned) for embedding extraction: the
                                    checkpoint with the best validation EER when validating, else the last one
    model_last.pt                   the last one, when validating
    model_avg.pt                    with train_conf.average: the mean of the selected kept checkpoints
    layer_usage.png, .tsv           the layers the trained backend relies on (the tsv: one weight per
                                    hidden state, for stage 1 --layers top:K:<exp>/layer_usage.tsv)
A run whose checkpoints/last.pt exists resumes from it.

loss_conf.margin_schedule sets the AAM margin before every step as a function of the step
(upmp.losses.scheduled_margin). train_conf.trainable restricts training to the backend parameters
matching its glob patterns (the others are frozen and left out of the optimizer; batch-norm layers
outside them keep their running statistics); the loss head always trains. train_conf.init starts
from another model.pt's backend weights.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import upmp.checkpoint as checkpoint
from upmp.config import dump_resolved
from upmp.errors import ConfigError, UpmpError
from upmp.losses import build_loss, scheduled_margin
from upmp.train.data import batch_loader, shard, spanout_frames, to_model_input
from upmp.train.inputs import Inputs, TrainingData, build_training_data
from upmp.train.report import Reporter, add_file_log
from upmp.train.validation import build_validator

__all__ = ["Inputs", "train", "step_seed"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the torch / numpy / random global generators at a step of a rank: dropout and
    any global-rng draws (upstream masking, layer drop) are then a function of (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class TrainGraph(nn.Module):
    """(upstream) -> span-out -> backend -> loss head, as one module for DDP."""

    def __init__(self, model: nn.Module, head: nn.Module, upstream: Optional[nn.Module],
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


@dataclass
class Run:
    """What the optimiser updates, and the state a checkpoint holds."""
    model: nn.Module
    head: nn.Module
    upstream: Optional[nn.Module]   # only when it is trained
    graph: TrainGraph
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    params: List[nn.Parameter]

    def train_state(self, step: int, train_seconds: float, best_eer: float, best_step: int,
                    log_window: List[List[float]]) -> Dict[str, Any]:
        state = {"model": self.model.state_dict(), "head": self.head.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": step, "train_seconds": train_seconds,
                 "best_eer": best_eer, "best_step": best_step, "log_window": log_window}
        if self.upstream is not None:
            state["upstream"] = checkpoint.upstream_weights(self.upstream)["state"]
        return state

    def load_train_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        if self.upstream is not None:
            checkpoint.load_upstream_weights(self.upstream, state["upstream"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

    def weights(self, inputs: Inputs) -> Dict[str, Any]:
        """The weights model.pt needs: the backend, its loss head (for large-margin fine-tuning),
        and the upstream when fine-tuned (only its adapter with train_conf.upstream_adapter)."""
        out: Dict[str, Any] = {"model": checkpoint.weights(self.model), "head": checkpoint.weights(self.head)}
        if self.upstream is not None:
            out["upstream"] = dict(checkpoint.upstream_weights(self.upstream), name=inputs.upstream,
                                   ckpt=inputs.upstream_ckpt)
        return out


def select_trainable(model: nn.Module, patterns: List[str]) -> int:
    """Freeze the backend parameters no pattern (fnmatch glob over the parameter names, e.g.
    backend.layer_pooling.*) matches; returns how many parameter values still train. One line for a
    pattern that matches nothing (so also for a selection that would freeze everything)."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            parts = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(f"train_conf.trainable: {pattern!r} matches no backend parameter; the names start "
                              f"with {', '.join(parts)} (python -m upmp.bin.model_info lists them all)")
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
    # every pattern matched a parameter, so something trains: a selection that freezes everything
    # is one whose patterns all match nothing, refused above
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_batchnorm(model: nn.Module, patterns: List[str]) -> List[nn.Module]:
    """The batch-norm layers whose running statistics no trainable pattern matches (kept in eval mode)."""
    return [m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(fnmatch.fnmatchcase(f"{name}.running_mean", p) for p in patterns)]


def init_backend(model: nn.Module, path: str) -> None:
    """The backend weights of another model.pt (train_conf.init), names and shapes checked."""
    state = checkpoint.read_model(path)["model"]
    mine = model.state_dict()
    bad = ([f"{k} missing" for k in mine if k not in state] + [f"{k} unexpected" for k in state if k not in mine]
           + [f"{k} of shape {tuple(state[k].shape)}, here {tuple(v.shape)}" for k, v in mine.items()
              if k in state and state[k].shape != v.shape])
    if bad:
        raise ConfigError(f"train_conf.init {path}: its backend does not fit this config's ({bad[0]}"
                          f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); use that model's "
                          "backend / backend_conf / use_hidden0 and the same upstream")
    model.load_state_dict(state)
    logger.info("backend weights from %s (train_conf.init)", path)


def build_run(cfg: Dict[str, Any], td: TrainingData, device, world: int, amp_dtype) -> Run:
    tc, oc = cfg["train_conf"], cfg["optim_conf"]
    torch.manual_seed(cfg["seed"])
    model = checkpoint.build_model(cfg, td.meta).to(device)
    if tc["init"]:
        init_backend(model, tc["init"])
    if tc["trainable"]:
        n = select_trainable(model, tc["trainable"])
        logger.info("train_conf.trainable %s: %d of %d backend parameter values train, the rest frozen",
                    tc["trainable"], n, sum(p.numel() for p in model.parameters()))
    head = build_loss(cfg["loss"], model.embed_dim, td.data.num_speakers, cfg["loss_conf"]).to(device)
    spanout = (tc["spanout_prob"], tc["spanout_span"], tc["spanout_rate"])
    graph = TrainGraph(model, head, td.upstream, spanout, cfg["seed"])
    if world > 1 and tc["sync_batchnorm"]:  # the same statistics whatever the number of processes
        from upmp.train.sync_bn import convert_batchnorm
        convert_batchnorm(graph)  # before the optimizer is given the parameters
    groups = [{"params": [p for p in model.parameters() if p.requires_grad] + list(head.parameters()),
               "lr": oc["lr"]}]
    max_lr = [oc["lr"]]
    trained_upstream = td.upstream if td.upstream is not None and td.upstream.trainable else None
    if trained_upstream is not None:
        groups.append({"params": [p for p in trained_upstream.parameters() if p.requires_grad],
                       "lr": oc["upstream_lr"]})
        max_lr.append(oc["upstream_lr"])
    optimizer = torch.optim.Adam(groups, lr=oc["lr"], weight_decay=oc["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=tc["steps"], pct_start=oc["pct_start"], anneal_strategy="cos")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    return Run(model, head, trained_upstream, graph, optimizer, scheduler, scaler,
               [p for g in groups for p in g["params"]])


def _distributed() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class NonFiniteLossError(UpmpError, RuntimeError):
    """The training loss became NaN or infinite (bad input values, or a learning rate too high)."""


# keys that change how fast a run goes, not its results: a resume may change them
_RUN_ONLY = ("num_workers", "num_threads", "keep_checkpoints")


def check_exp_dir(exp: Path, cfg: Dict[str, Any]) -> None:
    """Refuse an experiment dir holding another run's results (model.pt or a checkpoint) whose
    config.yaml differs from this one: its config would no longer describe its model."""
    old_path = exp / "config.yaml"
    if not old_path.is_file() or not any(p.is_file() for p in (exp / "model.pt", exp / "checkpoints" / "last.pt")):
        return
    import yaml
    old = yaml.safe_load(old_path.read_text()) or {}

    def flat(node, prefix=""):
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    a, b = flat(old), flat(cfg)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[-1] not in _RUN_ONLY)
    if diff:
        k = diff[0]
        raise ConfigError(f"{exp} holds the results of another config ({old_path}: {k} = {a.get(k)!r}, now "
                          f"{b.get(k)!r}{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); use a new "
                          "--exp_dir, or remove that one to retrain")


def train(cfg: Dict[str, Any], inputs: Inputs, exp_dir: str) -> Path:
    """Train with the resolved config on the inputs (cached or online); returns exp_dir/model.pt."""
    inputs.check()
    rank, world, local_rank = _distributed()
    exp = Path(exp_dir)
    check_exp_dir(exp, cfg)
    exp.mkdir(parents=True, exist_ok=True)
    handler = add_file_log(exp) if rank == 0 else None
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
            raise ConfigError(f"train_conf.device {name}: no GPU is visible")
        return torch.device("cuda", local_rank if world > 1 else torch.device(name).index or 0)
    return torch.device(name)


def _amp_dtype(amp: str, device: torch.device):
    """The autocast dtype: AMP pays only where the device has fast bf16 / fp16 arithmetic."""
    dtype = AMP_DTYPES[amp]
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("train_conf.amp fp16 needs a GPU (train_conf.device cuda); use none on CPU")
    if dtype is torch.bfloat16 and device.type == "cpu":
        # kept (its numerics can be checked on CPU) but warned: AMP is for GPUs; on CPUs its speed
        # depends on the chip and the thread count (benchmarks/amp.py measures it)
        logger.warning("train_conf.amp bf16 on CPU: no speed-up to count on (it depends on the chip and the "
                       "threads, see docs/benchmarks.md); time it here with benchmarks/amp.py, else use amp: none")
    fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype is torch.bfloat16 and device.type == "cuda" and not fast_bf16:
        raise ConfigError(f"train_conf.amp bf16: {torch.cuda.get_device_name(device)} has no fast bf16 "
                          "(compute capability < 8.0); use amp fp16 or none")
    return dtype


def _train(cfg: Dict[str, Any], inputs: Inputs, exp: Path, rank: int, world: int, local_rank: int) -> Path:
    tc, steps, main = cfg["train_conf"], cfg["train_conf"]["steps"], rank == 0
    if tc["num_threads"] > 0:
        torch.set_num_threads(tc["num_threads"])
    device = _device(tc["device"], world, local_rank)
    amp_dtype = _amp_dtype(tc["amp"], device)
    if tc["batch_size"] % world:
        raise ConfigError(f"train_conf.batch_size {tc['batch_size']} is the global batch: it must divide evenly "
                          f"over the {world} processes")
    td = build_training_data(cfg, inputs, device)
    rows = shard(tc["batch_size"], rank, world)
    logger.info("training on %d utterances of %d speakers, %s, L=%d D=%d%s", len(td.data.utts),
                td.data.num_speakers, td.description, td.meta.num_layers, td.meta.dim,
                f", {world} processes" if world > 1 else "")
    if inputs.lmft_from and tc["init"]:
        raise ConfigError(f"train_conf.init {tc['init']} and --lmft_from {inputs.lmft_from}: give one start model")
    run = build_run(cfg, td, device, world, amp_dtype)
    if inputs.lmft_from:  # before step 0 (a resumed run then loads its own checkpoint)
        from upmp.train.lmft import init_from_model
        init_from_model(run.model, run.head, inputs.lmft_from, td.data.speakers, run.upstream)
    n_params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    logger.info("backend %s: %d trainable parameters (without loss head)", cfg["backend"], n_params)
    validator = None
    if inputs.valid_trials and tc["valid_every"] > 0:
        validator = build_validator(inputs, td, device, rank, world)
        logger.info("validating every %d steps on %d trials (%s)", tc["valid_every"], len(validator.trials),
                    inputs.valid_trials)
    from upmp.train.averaging import Snapshots
    snapshots = Snapshots(exp, cfg, validator is not None)  # every rank: its checks raise on all
    ckpt_path, best_path = exp / "checkpoints" / "last.pt", exp / "checkpoints" / "best.pt"
    start, train_seconds, best_eer, best_step = 0, 0.0, float("inf"), 0
    window: List[Tuple[float, float]] = []  # (loss, accuracy) of the steps since the last log row
    if ckpt_path.is_file():
        state = checkpoint.read_train_state(ckpt_path, device)
        run.load_train_state(state)
        start, train_seconds = state["step"], state["train_seconds"]
        best_eer, best_step = state["best_eer"], state["best_step"]
        # the steps between the last log row and the checkpoint count in the next row, as uninterrupted
        window = [tuple(w) for w in state.get("log_window", [])]
        logger.info("resumed from %s at step %d", ckpt_path, start)
    if main:  # set-up done: this run now owns the experiment dir
        dump_resolved(cfg, str(exp))
    report = Reporter(exp, start, validator is not None) if main else None
    runner = run.graph
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            run.graph, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=run.upstream is not None)
    loader = batch_loader(td.data, range(start, steps), rank, world, tc["num_workers"], pin_memory=device.type == "cuda")
    frozen_bn = frozen_batchnorm(run.model, tc["trainable"]) if tc["trainable"] else []

    def train_mode():
        run.graph.train()
        for m in frozen_bn:
            m.eval()
    train_mode()
    loss_conf = cfg["loss_conf"]
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    t0, timed, run_start = time.time(), 0, time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", mininterval=5, disable=not main)
    for step, (x, labels) in zip(bar, loader):
        seed = step_seed(cfg["seed"], step, rank)  # dropout and global-rng draws: functions of the step
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        margin = scheduled_margin(loss_conf, step)
        if loss_conf.get("margin_schedule", {}).get("shape", "none") != "none":
            run.head.set_margin(margin)
        with autocast():
            loss, acc = runner(to_model_input(x, device), labels.to(device, non_blocking=True), step, rows)
        _check_finite(loss, step, td, rows, world)  # before the update: no NaN weights are ever written
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, cfg["optim_conf"]["grad_clip"])
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        window.append((loss.item(), acc.item()))
        timed += 1
        done = step + 1
        if done % tc["log_every"] == 0 or done == steps:
            mean = torch.tensor(np.mean(window, axis=0), dtype=torch.float64)
            if world > 1:
                torch.distributed.all_reduce(mean)
                mean /= world
            if main:
                report.train_step(done, steps, *mean.tolist(), run.scheduler.get_last_lr()[0], margin,
                                  (time.time() - t0) / timed)
                bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.3f}")
            t0, timed, window = time.time(), 0, []
        eer = None
        if validator and (done % tc["valid_every"] == 0 or done == steps):
            eer = validator.eer(run.model)  # every rank embeds its share; rank 0 scores
            train_mode()
            if main:
                if eer < best_eer:
                    best_eer, best_step = eer, done
                    checkpoint.save_best(best_path, dict(run.weights(inputs), step=done, eer=eer))
                report.valid_step(done, eer, best_eer, best_step)
        if main and snapshots.due(done):  # before last.pt: a resume from last.pt finds it
            snapshots.save(done, dict(run.weights(inputs), config=cfg, step=done, eer=eer))
        if done % tc["ckpt_every"] == 0 or done == steps:
            pending = _world_mean_window(window, world, device)  # every rank takes part
            if main:
                checkpoint.save_train_state(ckpt_path, run.train_state(
                    done, train_seconds + time.time() - run_start, best_eer, best_step, pending))
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    out = exp / "model.pt"
    if main:
        _finish(cfg, inputs, exp, td, run, report, validator is not None, n_params, world,
                train_seconds + time.time() - run_start, device,
                lambda final: _write_average(cfg, exp, snapshots, final, td, device,
                                             validator if world == 1 and run.upstream is None else None))
    return out


def _world_mean_window(window: List[Tuple[float, float]], world: int, device) -> List[List[float]]:
    """The (loss, accuracy) of the steps not yet logged, averaged over the processes: what a resumed
    run (every rank) starts its window with, so its next log row is the uninterrupted run's mean
    (the mean over ranks of each rank's mean over steps)."""
    if world == 1 or not window:
        return [list(w) for w in window]
    t = torch.tensor(window, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / world).tolist()


def _check_finite(loss: torch.Tensor, step: int, td: TrainingData, rows: range, world: int) -> None:
    mine = not torch.isfinite(loss).item()
    bad = torch.tensor([float(mine)], device=loss.device)
    if world > 1:  # every rank stops together (the others would wait on the next all-reduce)
        torch.distributed.all_reduce(bad)
    if bad.item() == 0:
        return
    where = (f"on the batch of utterances {', '.join(td.data.step_utterances(step, rows))}" if mine
             else "on another process's rows of the batch")
    raise NonFiniteLossError(f"step {step + 1}: the training loss is {loss.item()} {where}; look for NaN / inf "
                             "values in those utterances (their audio or layer stacks), or lower optim_conf.lr; "
                             "model.pt not written (checkpoints/last.pt holds the last finite step)")


def _finish(cfg, inputs: Inputs, exp: Path, td: TrainingData, run: Run, report: Reporter, validated: bool,
            n_params: int, world: int, train_seconds: float, device, write_average) -> None:
    """model.pt (the best validation checkpoint when validating, else the last), the summary, the plots;
    model_avg.pt (train_conf.average) before model.pt, whose presence marks the run complete."""
    report.close()
    steps = cfg["train_conf"]["steps"]
    final = {"config": cfg, "layer_stack": vars(td.meta), "speakers": td.data.speakers, "num_params": n_params,
             "train_seconds": train_seconds, "step": steps, "world_size": world, "inputs": inputs.recorded()}
    if cfg["train_conf"]["average"] is not None:
        write_average(dict(final, **run.weights(inputs)))
    out = exp / "model.pt"
    if validated:
        checkpoint.save_model(exp / "model_last.pt", dict(final, **run.weights(inputs)))
        best = checkpoint.read_best(exp / "checkpoints" / "best.pt")
        final.update(step=best["step"], valid_eer=best["eer"], model=best["model"], head=best.get("head"))
        if "upstream" in best:
            final["upstream"] = best["upstream"]
        checkpoint.save_model(out, final)
        logger.info("model.pt: step %d, best validation EER %.2f %%", best["step"], best["eer"])
    else:
        checkpoint.save_model(out, dict(final, **run.weights(inputs)))
    report.summary(final, len(td.data.speakers))
    x, _ = td.data.batch(steps)
    seen = td.meta.layers if td.meta.layers is not None else list(range(td.meta.num_layers))
    report.plots(run.model, x, td.upstream, device, seen if run.model.use_hidden0 else seen[1:])
    logger.info("wrote %s", out)


def _write_average(cfg, exp: Path, snapshots, final: Dict[str, Any], td: TrainingData, device, validator) -> None:
    """model_avg.pt from the kept checkpoints train_conf.average selects (validated when possible)."""
    from upmp.train.averaging import average_checkpoints
    paths = snapshots.select(**cfg["train_conf"]["average"])
    content = average_checkpoints(exp, paths, base=final)
    if validator is not None:
        model = checkpoint.build_model(cfg, td.meta)
        model.load_state_dict(content["model"])
        content["valid_eer"] = validator.eer(model.to(device))
    checkpoint.save_model(exp / "model_avg.pt", content)
    logger.info("model_avg.pt: mean of the checkpoints of steps %s%s", content["averaged"]["steps"],
                f", validation EER {content['valid_eer']:.2f} %" if validator is not None else "")
