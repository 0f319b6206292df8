"""The plots a fastai user expects after training, drawn from recorded numbers (no Learner needed)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: Path, bottom: float = 0.0) -> Path:
    """Write ``fig`` as a PNG (``bottom``: the figure's share kept free below the axes, for a note)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lr_find(lrs: Sequence[float], losses: Sequence[float], chosen: float, path: Path, source: str = "lr_find",
            suggestion: float | None = None, reason: str = "") -> Path:
    """Smoothed loss against the learning rate of the mock run, with the chosen rate marked; when lr_find's
    suggestion was not used (``source`` "fallback"), that suggestion too, and the reason under the plot."""
    note = textwrap.fill(reason, 100) if reason and source == "fallback" else ""
    fig, ax = plt.subplots(figsize=(6, 4.6 if note else 4))
    if len(lrs):
        ax.plot(lrs, losses)
    ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen lr = {chosen:.2e} ({source})")
    if source == "fallback" and suggestion is not None and suggestion > 0:
        ax.axvline(suggestion, color="tab:gray", linestyle=":", label=f"lr_find's suggestion {suggestion:.2e}, unused")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="Learning-rate finder")
    ax.legend(fontsize=8)
    if note:
        fig.text(0.02, 0.02, note, fontsize=7, va="bottom")
    return _save(fig, path, bottom=0.12 if note else 0.0)


def schedule(lrs: Sequence[float], moms: Sequence[float], path: Path) -> Path:
    """The one-cycle learning rate and momentum over training iterations."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(lrs)
    a1.set(xlabel="iteration", ylabel="learning rate", title="One-cycle learning rate")
    a2.plot(moms, color="tab:orange")
    a2.set(xlabel="iteration", ylabel="momentum (β1)", title="One-cycle momentum")
    return _save(fig, path)


def losses(train_losses: Sequence[float], valid_losses: Sequence[float], iters_per_epoch: int, path: Path) -> Path:
    """Training loss per iteration and validation loss at the end of each epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(train_losses) + 1), train_losses, label="train (smoothed)")
    epochs_end = [iters_per_epoch * (i + 1) for i in range(len(valid_losses))]
    ax.plot(epochs_end, valid_losses, marker="o", label="valid")
    ax.set(xlabel="iteration", ylabel="cross-entropy loss", title="Loss")
    ax.legend()
    return _save(fig, path)


def confusion(matrix: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    """Confusion matrix on the validation set (rows: actual, columns: predicted)."""
    n = len(labels)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    accuracy = np.trace(matrix) / matrix.sum()
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="actual", title=f"Confusion matrix (accuracy {accuracy:.3f})")
    if n <= 30:
        threshold = matrix.max() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    return _save(fig, path)
