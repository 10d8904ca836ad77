"""What training reports into the experiment dir (rank 0): train.log, train_metrics.tsv,
valid_metrics.tsv, TensorBoard events, train_curve.png, layer_usage.png, train_summary.json."""
from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from upmp.fileio import atomic_write_text

logger = logging.getLogger(__name__)


class _TrainLog(logging.FileHandler):
    """train.log: a full disk stops training with one error naming the file (logging would print a
    traceback for every line and train on without a log)."""

    def handleError(self, record: logging.LogRecord) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            if e.filename is None:
                e.filename = self.baseFilename
            raise e
        super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as e:  # the last lines could not be flushed: the disk is full
            if e.filename is None:
                e.filename = self.baseFilename
            raise


def add_file_log(exp_dir: Path) -> logging.Handler:
    handler = _TrainLog(exp_dir / "train.log")
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


def _drop_rows_after(tsv: Path, step: int) -> None:
    """Remove the rows of steps after `step` (a run killed after its last checkpoint logged them;
    the resumed run logs them again), and a row cut short by the kill."""
    lines = tsv.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.endswith("\n") and ln.split("\t", 1)[0].isdigit()
                        and int(ln.split("\t", 1)[0]) <= step]
    if keep != lines:
        atomic_write_text(tsv, "".join(keep))


class Reporter:
    """Training curves as TSV rows and TensorBoard scalars (resumes append; a resume first drops the
    rows and TensorBoard events after its step). Only rank 0 creates one."""

    def __init__(self, exp: Path, start: int, validating: bool):
        from torch.utils.tensorboard import SummaryWriter
        self.exp = exp
        self.metrics_path, self.valid_path = exp / "train_metrics.tsv", exp / "valid_metrics.tsv"
        if start == 0 or not self.metrics_path.is_file():
            atomic_write_text(self.metrics_path, "step\tloss\taccuracy\tlr\tmargin\n")
        else:
            _drop_rows_after(self.metrics_path, start)
        if validating and (start == 0 or not self.valid_path.is_file()):
            atomic_write_text(self.valid_path, "step\teer\n")
        elif validating:
            _drop_rows_after(self.valid_path, start)
        self.board = SummaryWriter(log_dir=str(exp / "tensorboard"), purge_step=start)

    def train_step(self, done: int, steps: int, loss: float, acc: float, lr: float, margin: float,
                   seconds_per_step: float) -> None:
        """margin: the AAM margin of the window's last step (loss_conf.margin_schedule)."""
        logger.info("step %d/%d loss %.4f acc %.3f lr %.2e margin %.4g (%.2f s/step)", done, steps, loss, acc, lr,
                    margin, seconds_per_step)
        with open(self.metrics_path, "a") as f:
            f.write(f"{done}\t{loss:.5f}\t{acc:.5f}\t{lr:.6g}\t{margin:.6g}\n")
        self.board.add_scalar("train/loss", loss, done)
        self.board.add_scalar("train/accuracy", acc, done)
        self.board.add_scalar("train/lr", lr, done)
        self.board.add_scalar("train/margin", margin, done)

    def valid_step(self, done: int, eer: float, best_eer: float, best_step: int) -> None:
        with open(self.valid_path, "a") as f:
            f.write(f"{done}\t{eer:.4f}\n")
        self.board.add_scalar("valid/eer", eer, done)
        logger.info("step %d: validation EER %.2f %% (best %.2f %% at step %d)", done, eer, best_eer, best_step)

    def close(self) -> None:
        self.board.close()

    def summary(self, final: Dict[str, Any], num_speakers: int) -> None:
        atomic_write_text(self.exp / "train_summary.json", json.dumps(
            {k: final[k] for k in ("num_params", "train_seconds", "step", "world_size", "inputs")}
            | {"valid_eer": final.get("valid_eer"), "num_speakers": num_speakers}, indent=2) + "\n")

    def plots(self, model, x, upstream: Optional[Any], device, layers) -> None:
        """train_curve.png, and layer_usage.png + layer_usage.tsv (the upstream's hidden-state
        indices `layers` the backend sees) from one batch x (of stacks, or of audio with an upstream)."""
        import torch

        from upmp.analysis import layer_usage, plot_layer_usage, write_layer_usage_tsv
        plot_curve(self.metrics_path, self.exp / "train_curve.png")
        if upstream is not None:
            with torch.no_grad():
                upstream.eval()
                x, _ = upstream(x.to(device), torch.full((x.shape[0],), x.shape[1], device=device))
        usage = layer_usage(model, x.to(device))
        plot_layer_usage(usage, self.exp / "layer_usage.png", labels=list(layers))
        write_layer_usage_tsv(usage, self.exp / "layer_usage.tsv", list(layers))
