"""Which layers a trained backend relies on (the paper's analysis), as a PNG.

- superb_ecapa: the softmax layer weights.
- mhfa: its two softmax layer weightings (keys, values).
- upmp: the VAD's layer-mixing matrices (softmax rows) and the layer attentive
  pooling scores per head, averaged over a batch.
- lap: the layer attentive pooling scores per head.
- xvector: the one layer it uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch


@torch.no_grad()
def layer_usage(model, stacks: torch.Tensor) -> Dict[str, np.ndarray]:
    """Arrays describing layer use, from the model and one batch (B, D, L, T) of inputs."""
    backend = model.backend
    out: Dict[str, np.ndarray] = {}
    if hasattr(backend, "layer_weights"):  # (L,) one softmax weighting, or (rows, L) several
        weights = np.atleast_2d(backend.layer_weights().cpu().numpy())
        out[getattr(backend, "layer_weights_label", "SUPERB layer weights")] = weights
    if hasattr(backend, "vads"):
        for i, vad in enumerate(backend.vads):
            out[f"VAD mixing, block {i + 1} (row: output layer)"] = torch.softmax(vad.mix_logits, -1).cpu().numpy()
    if hasattr(backend, "layer_pooling"):
        was_training = model.training
        model.eval()
        model(stacks)
        model.train(was_training)
        out["layer attention score (row: head)"] = backend.layer_pooling.last_scores.cpu().numpy()
    if hasattr(backend, "layer"):
        L = stacks.shape[2] - (0 if model.use_hidden0 else 1)
        onehot = np.zeros((1, L))
        onehot[0, backend.layer] = 1.0
        out["layer used"] = onehot
    return out


def plot_layer_usage(usage: Dict[str, np.ndarray], png: Path, first_layer: int = 0) -> None:
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
        ax.set_xticks(range(a.shape[1]), [str(first_layer + i) for i in range(a.shape[1])])
        if a.shape[0] == 1:
            ax.set_yticks([])
        else:
            ax.set_yticks(range(a.shape[0]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
