"""Backend training: Adam + OneCycle, AAM-softmax, random crops; cached or online inputs;
one process or DistributedDataParallel under torchrun; optional AMP on GPU (upmp.train.device).

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

train() runs set_up (data, model, optimiser, validator), resume (checkpoints/last.pt), then per step
train_step, validate and save_checkpoints, and at the end finish (model.pt, summary, plots).

loss_conf.margin_schedule sets the AAM margin before every step as a function of the step
(upmp.losses.scheduled_margin). train_conf.trainable restricts training to the backend parameters
matching its glob patterns (the others are frozen and left out of the optimizer; batch-norm layers
outside them keep their running statistics); the loss head always trains. train_conf.init starts
from another model.pt's backend weights.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import upmp.checkpoint as checkpoint
import upmp.train.device as device_
from upmp.config import dump_resolved
from upmp.errors import ConfigError, UpmpError
from upmp.losses import build_loss, scheduled_margin
from upmp.train.data import batch_loader, shard, spanout_frames, to_model_input
from upmp.train.inputs import Inputs, TrainingData, build_training_data
from upmp.train.report import Reporter, add_file_log
from upmp.train.schema import TrainConfig
from upmp.train.validation import build_validator

__all__ = ["Inputs", "train", "step_seed"]

logger = logging.getLogger(__name__)

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


def build_model(cfg: TrainConfig, meta) -> nn.Module:
    """The backend the config describes, sized for the layer stacks."""
    return checkpoint.build_model(cfg.backend, cfg.use_hidden0, dataclasses.asdict(cfg.backend_conf), meta)


def build_run(cfg: TrainConfig, td: TrainingData, device, world: int, amp_dtype) -> Run:
    tc, oc = cfg.train_conf, cfg.optim_conf
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, td.meta).to(device)
    if tc.init:
        init_backend(model, tc.init)
    if tc.trainable:
        n = select_trainable(model, tc.trainable)
        logger.info("train_conf.trainable %s: %d of %d backend parameter values train, the rest frozen",
                    tc.trainable, n, sum(p.numel() for p in model.parameters()))
    head = build_loss(cfg.loss, model.embed_dim, td.data.num_speakers, cfg.loss_conf).to(device)
    spanout = (tc.spanout_prob, tc.spanout_span, tc.spanout_rate)
    graph = TrainGraph(model, head, td.upstream, spanout, cfg.seed)
    if world > 1 and tc.sync_batchnorm:  # the same statistics whatever the number of processes
        from upmp.train.sync_bn import convert_batchnorm
        convert_batchnorm(graph)  # before the optimizer is given the parameters
    groups = [{"params": [p for p in model.parameters() if p.requires_grad] + list(head.parameters()),
               "lr": oc.lr}]
    max_lr = [oc.lr]
    trained_upstream = td.upstream if td.upstream is not None and td.upstream.trainable else None
    if trained_upstream is not None:
        groups.append({"params": [p for p in trained_upstream.parameters() if p.requires_grad],
                       "lr": oc.upstream_lr})
        max_lr.append(oc.upstream_lr)
    optimizer = torch.optim.Adam(groups, lr=oc.lr, weight_decay=oc.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=tc.steps, pct_start=oc.pct_start, anneal_strategy="cos")
    scaler = device_.grad_scaler(device, amp_dtype)
    return Run(model, head, trained_upstream, graph, optimizer, scheduler, scaler,
               [p for g in groups for p in g["params"]])


class NonFiniteLossError(UpmpError, RuntimeError):
    """The training loss became NaN or infinite (bad input values, or a learning rate too high)."""


# keys that change how fast a run goes, not its results: a resume may change them
_RUN_ONLY = ("num_workers", "num_threads", "keep_checkpoints")


def check_exp_dir(exp: Path, cfg: TrainConfig) -> None:
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
    a, b = flat(old), flat(cfg.to_dict())
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[-1] not in _RUN_ONLY)
    if diff:
        k = diff[0]
        raise ConfigError(f"{exp} holds the results of another config ({old_path}: {k} = {a.get(k)!r}, now "
                          f"{b.get(k)!r}{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); use a new "
                          "--exp_dir, or remove that one to retrain")


def train(cfg: TrainConfig, inputs: Inputs, exp_dir: str) -> Path:
    """Train with the resolved config on the inputs (cached or online); returns exp_dir/model.pt."""
    inputs.check()
    procs = device_.processes()
    exp = Path(exp_dir)
    check_exp_dir(exp, cfg)
    exp.mkdir(parents=True, exist_ok=True)
    handler = add_file_log(exp) if procs.main else None
    if not procs.main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with device_.process_group(procs, cfg.train_conf.device):
            return _train(cfg, inputs, exp, procs)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


@dataclass
class Session:
    """What set_up builds for a run: its config, inputs and processes, data, model and helpers."""
    cfg: TrainConfig
    inputs: Inputs
    exp: Path
    procs: device_.Processes
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    td: TrainingData
    rows: range                     # this rank's rows of each global batch
    run: Run
    n_params: int                   # trainable backend parameter values (without loss head)
    validator: Optional[Any]
    snapshots: Any                  # upmp.train.averaging.Snapshots

    @property
    def ckpt_path(self) -> Path:
        return self.exp / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.exp / "checkpoints" / "best.pt"


@dataclass
class Progress:
    """The state that runs on from step to step (and a checkpoint carries over a resume)."""
    start: int = 0                  # the first step this process trains
    train_seconds: float = 0.0      # of the earlier processes of this run (resumed)
    best_eer: float = float("inf")
    best_step: int = 0
    window: List[Tuple[float, float]] = field(default_factory=list)  # (loss, accuracy) of the steps since the last log row


def set_up(cfg: TrainConfig, inputs: Inputs, exp: Path, procs: device_.Processes) -> Session:
    """Threads, device and AMP; the training data, the model, its optimiser; the validator and kept checkpoints."""
    tc = cfg.train_conf
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    device = device_.resolve_device(tc.device, procs)
    amp_dtype = device_.amp_dtype(tc.amp, device)
    rows = shard(tc.batch_size, procs.rank, procs.world)  # refuses a batch that does not divide over the processes
    td = build_training_data(cfg, inputs, device)
    logger.info("training on %d utterances of %d speakers, %s, L=%d D=%d%s", len(td.data.utts),
                td.data.num_speakers, td.description, td.meta.num_layers, td.meta.dim,
                f", {procs.world} processes" if procs.world > 1 else "")
    if inputs.lmft_from and tc.init:
        raise ConfigError(f"train_conf.init {tc.init} and --lmft_from {inputs.lmft_from}: give one start model")
    run = build_run(cfg, td, device, procs.world, amp_dtype)
    if inputs.lmft_from:  # before step 0 (a resumed run then loads its own checkpoint)
        from upmp.train.lmft import init_from_model
        init_from_model(run.model, run.head, inputs.lmft_from, td.data.speakers, run.upstream)
    n_params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    logger.info("backend %s: %d trainable parameters (without loss head)", cfg.backend, n_params)
    validator = None
    if inputs.valid_trials and tc.valid_every > 0:
        validator = build_validator(inputs, td, device, procs.rank, procs.world)
        logger.info("validating every %d steps on %d trials (%s)", tc.valid_every, len(validator.trials),
                    inputs.valid_trials)
    from upmp.train.averaging import Snapshots
    snapshots = Snapshots(exp, cfg, validator is not None)  # every rank: its checks raise on all
    return Session(cfg, inputs, exp, procs, device, amp_dtype, td, rows, run, n_params, validator, snapshots)


def resume(s: Session) -> Progress:
    """The progress of checkpoints/last.pt, its state loaded into the run; a fresh start without it."""
    if not s.ckpt_path.is_file():
        return Progress()
    state = checkpoint.read_train_state(s.ckpt_path, s.device)
    s.run.load_train_state(state)
    # the steps between the last log row and the checkpoint count in the next row, as uninterrupted
    progress = Progress(state["step"], state["train_seconds"], state["best_eer"], state["best_step"],
                        [tuple(w) for w in state.get("log_window", [])])
    logger.info("resumed from %s at step %d", s.ckpt_path, progress.start)
    return progress


def _train(cfg: TrainConfig, inputs: Inputs, exp: Path, procs: device_.Processes) -> Path:
    s = set_up(cfg, inputs, exp, procs)
    progress = resume(s)
    tc, steps, main = cfg.train_conf, cfg.train_conf.steps, procs.main
    if main:  # set-up done: this run now owns the experiment dir
        dump_resolved(cfg.to_dict(), str(exp))
    report = Reporter(exp, progress.start, s.validator is not None) if main else None
    runner = device_.distribute(s.run.graph, s.device, procs, find_unused=s.run.upstream is not None)
    loader = batch_loader(s.td.data, range(progress.start, steps), procs.rank, procs.world, tc.num_workers,
                          pin_memory=s.device.type == "cuda")
    frozen_bn = frozen_batchnorm(s.run.model, tc.trainable) if tc.trainable else []

    def train_mode():
        s.run.graph.train()
        for m in frozen_bn:
            m.eval()
    train_mode()
    autocast = device_.autocast(s.device, s.amp_dtype)
    t0, timed, run_start = time.time(), 0, time.time()
    bar = tqdm(range(progress.start, steps), initial=progress.start, total=steps, desc="train", mininterval=5,
               disable=not main)
    for step, (x, labels) in zip(bar, loader):
        margin = scheduled_margin(cfg.loss_conf.margin_schedule, cfg.loss_conf.margin, step)
        loss, acc = train_step(s, runner, autocast, step, margin, x, labels)
        progress.window.append((loss.item(), acc.item()))
        timed += 1
        done = step + 1
        if done % tc.log_every == 0 or done == steps:
            mean = device_.world_mean(torch.tensor(np.mean(progress.window, axis=0), dtype=torch.float64),
                                      procs.world)
            if main:
                report.train_step(done, steps, *mean.tolist(), s.run.scheduler.get_last_lr()[0], margin,
                                  (time.time() - t0) / timed)
                bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.3f}")
            t0, timed, progress.window = time.time(), 0, []
        eer = validate(s, done, progress, report, train_mode)
        save_checkpoints(s, done, eer, progress, progress.train_seconds + time.time() - run_start)
    bar.close()
    device_.barrier(procs.world)
    if main:
        finish(s, report, progress.train_seconds + time.time() - run_start)
    return exp / "model.pt"


def train_step(s: Session, runner: nn.Module, autocast, step: int, margin: float, x: torch.Tensor,
               labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch; returns this rank's (loss, accuracy)."""
    run = s.run
    seed = step_seed(s.cfg.seed, step, s.procs.rank)  # dropout and global-rng draws: functions of the step
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if s.cfg.loss_conf.margin_schedule.shape != "none":
        run.head.set_margin(margin)
    with autocast():
        loss, acc = runner(to_model_input(x, s.device), labels.to(s.device, non_blocking=True), step, s.rows)
    _check_finite(loss, step, s.td, s.rows, s.procs.world)  # before the update: no NaN weights are ever written
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.params, s.cfg.optim_conf.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss, acc


def validate(s: Session, done: int, progress: Progress, report: Optional[Reporter], train_mode) -> Optional[float]:
    """The validation EER at a validation step (None at others); rank 0 keeps the best weights in best.pt."""
    tc = s.cfg.train_conf
    if not s.validator or not (done % tc.valid_every == 0 or done == tc.steps):
        return None
    eer = s.validator.eer(s.run.model)  # every rank embeds its share; rank 0 scores
    train_mode()
    if s.procs.main:
        if eer < progress.best_eer:
            progress.best_eer, progress.best_step = eer, done
            checkpoint.save_best(s.best_path, dict(s.run.weights(s.inputs), step=done, eer=eer))
        report.valid_step(done, eer, progress.best_eer, progress.best_step)
    return eer


def save_checkpoints(s: Session, done: int, eer: Optional[float], progress: Progress, train_seconds: float) -> None:
    """A kept checkpoint (step_<N>.pt) when due, then checkpoints/last.pt every ckpt_every steps and at the end."""
    tc = s.cfg.train_conf
    if s.procs.main and s.snapshots.due(done):  # before last.pt: a resume from last.pt finds it
        s.snapshots.save(done, dict(s.run.weights(s.inputs), config=s.cfg.to_dict(), step=done, eer=eer))
    if done % tc.ckpt_every == 0 or done == tc.steps:
        pending = _world_mean_window(progress.window, s.procs.world, s.device)  # every rank takes part
        if s.procs.main:
            checkpoint.save_train_state(s.ckpt_path, s.run.train_state(
                done, train_seconds, progress.best_eer, progress.best_step, pending))


def _world_mean_window(window: List[Tuple[float, float]], world: int, device) -> List[List[float]]:
    """The (loss, accuracy) of the steps not yet logged, averaged over the processes: what a resumed
    run (every rank) starts its window with, so its next log row is the uninterrupted run's mean
    (the mean over ranks of each rank's mean over steps)."""
    if world == 1 or not window:
        return [list(w) for w in window]
    t = device_.world_sum(torch.tensor(window, dtype=torch.float64, device=device), world)
    return (t / world).tolist()


def _check_finite(loss: torch.Tensor, step: int, td: TrainingData, rows: range, world: int) -> None:
    mine = not torch.isfinite(loss).item()
    # every rank stops together (the others would wait on the next all-reduce)
    bad = device_.world_sum(torch.tensor([float(mine)], device=loss.device), world)
    if bad.item() == 0:
        return
    where = (f"on the batch of utterances {', '.join(td.data.step_utterances(step, rows))}" if mine
             else "on another process's rows of the batch")
    raise NonFiniteLossError(f"step {step + 1}: the training loss is {loss.item()} {where}; look for NaN / inf "
                             "values in those utterances (their audio or layer stacks), or lower optim_conf.lr; "
                             "model.pt not written (checkpoints/last.pt holds the last finite step)")


def finish(s: Session, report: Reporter, train_seconds: float) -> None:
    """model.pt (the best validation checkpoint when validating, else the last), the summary, the plots;
    model_avg.pt (train_conf.average) before model.pt, whose presence marks the run complete."""
    cfg, td, run, inputs, exp = s.cfg, s.td, s.run, s.inputs, s.exp
    report.close()
    steps = cfg.train_conf.steps
    final = {"config": cfg.to_dict(), "layer_stack": vars(td.meta), "speakers": td.data.speakers,
             "num_params": s.n_params, "train_seconds": train_seconds, "step": steps, "world_size": s.procs.world,
             "inputs": inputs.recorded()}
    if cfg.train_conf.average is not None:
        _write_average(s, dict(final, **run.weights(inputs)))
    out = exp / "model.pt"
    if s.validator is not None:
        checkpoint.save_model(exp / "model_last.pt", dict(final, **run.weights(inputs)))
        best = checkpoint.read_best(s.best_path)
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
    report.plots(run.model, x, td.upstream, s.device, seen if run.model.use_hidden0 else seen[1:])
    logger.info("wrote %s", out)


def _write_average(s: Session, final: Dict[str, Any]) -> None:
    """model_avg.pt from the kept checkpoints train_conf.average selects (validated when possible:
    one process, the backend alone)."""
    from upmp.train.averaging import average_checkpoints
    validator = s.validator if s.procs.world == 1 and s.run.upstream is None else None
    paths = s.snapshots.select(s.cfg.train_conf.average)
    content = average_checkpoints(s.exp, paths, base=final)
    if validator is not None:
        model = build_model(s.cfg, s.td.meta)
        model.load_state_dict(content["model"])
        content["valid_eer"] = validator.eer(model.to(s.device))
    checkpoint.save_model(s.exp / "model_avg.pt", content)
    logger.info("model_avg.pt: mean of the checkpoints of steps %s%s", content["averaged"]["steps"],
                f", validation EER {content['valid_eer']:.2f} %" if validator is not None else "")
