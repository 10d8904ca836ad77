"""Which layers a trained backend relies on (the paper's analysis), as a PNG. Each backend says
what to show (upmp.backends.base.Backend.layer_usage):

- superb_ecapa: the softmax layer weights.
- mhfa: its two softmax layer weightings (keys, values).
- upmp: the VAD's layer-mixing matrices (softmax rows) and the layer attentive
  pooling scores per head, averaged over a batch.
- lap: the layer attentive pooling scores per head.
- ltdnn_d3net, ltdnn_ecapa: the layer attentive pooling scores per head (on the fused blocks' output).
- xvector: the one layer it uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch


@torch.no_grad()
def layer_usage(model, stacks: torch.Tensor) -> Dict[str, np.ndarray]:
    """Arrays (rows, L) describing layer use, from the model (SpeakerEmbeddingModel) and one
    batch (B, D, L_all, T) of inputs: what its backend's `layer_usage()` reports, in eval mode."""
    was_training = model.training
    model.eval()
    try:
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
