"""The experiments' plots: mean ± std over seeds, one colour per variant, small PNGs (80 dpi)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

DPI = 80

# One series per variant: the runs (seeds) of that variant, each a sequence of y values.
Series = Mapping[str, Sequence[Sequence[float]]]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _stack(runs: Sequence[Sequence[float]]) -> np.ndarray:
    """Runs as rows, NaN-padded to the longest (a diverged run stops early)."""
    n = max((len(r) for r in runs), default=0)
    out = np.full((len(runs), n), np.nan)
    for i, r in enumerate(runs):
        out[i, : len(r)] = np.asarray(r, dtype=float)
    return out


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far), so curves keep their length."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _band(ax, x: np.ndarray, runs: np.ndarray, label: str, geometric: bool = False, **style) -> None:
    """The mean over runs and a ± one std band; ``geometric``: both taken on log10 (×/÷ the geometric std), for
    quantities that span orders of magnitude."""
    values = np.log10(np.where(runs > 0, runs, np.nan)) if geometric else runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after a diverged run: mean is NaN
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    lo, mid, hi = (10 ** v for v in (mean - std, mean, mean + std)) if geometric else (mean - std, mean, mean + std)
    (line,) = ax.plot(x, mid, label=label, **style)
    if len(runs) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


# One panel of ``lines``: title, x label, y label, and per variant (x values, runs of y values at those x).
Panel = tuple[str, str, str, Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]]]


def lines(path: Path, panels: Sequence[Panel], log_x: Sequence[bool] = (), log_y: Sequence[bool] = (),
          hline: float | None = None, title: str = "", integer_x: bool = False, markers: bool = False,
          sharey: bool = False, ylim: tuple[float, float] | None = None, geometric: bool = False) -> Path:
    """One panel per entry; each variant's line is the mean over its runs at the given x, the band ± one std
    (``geometric``: on log10, see ``_band``); ``hline`` draws a dashed reference (a target accuracy) on every
    panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False, sharey=sharey)
    for i, (ax, (panel_title, xlabel, ylabel, series)) in enumerate(zip(axes[0], panels, strict=True)):
        for variant, (x, runs) in series.items():
            stacked = _stack(runs)
            if stacked.size == 0:
                continue
            _band(ax, np.asarray(x, dtype=float)[: stacked.shape[1]], stacked, variant, geometric,
                  marker="o" if markers else None, markersize=3)
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=xlabel, ylabel=ylabel, title=panel_title,
               xscale="log" if i < len(log_x) and log_x[i] else "linear",
               yscale="log" if i < len(log_y) and log_y[i] else "linear")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def curves(path: Path, panels: Sequence[tuple[str, str, Series]], xlabel: str = "epoch", x0: int = 1,
           log_y: Sequence[bool] = (), title: str = "", sharey: bool = False) -> Path:
    """``lines`` against the index of each value (epoch 1, 2 … or iteration 1, 2 …)."""
    def indexed(series: Series) -> dict[str, tuple[Sequence[float], Sequence[Sequence[float]]]]:
        longest = {name: max((len(r) for r in runs), default=0) for name, runs in series.items()}
        return {name: (range(x0, x0 + longest[name]), runs) for name, runs in series.items()}

    epochs = xlabel == "epoch"
    return lines(path, [(t, xlabel, y, indexed(series)) for t, y, series in panels], log_y=log_y, title=title,
                 integer_x=epochs, markers=epochs, sharey=sharey)


def validation_curves(path: Path, runs: Mapping[str, Sequence[Any]], title: str) -> Path:
    """Validation accuracy and loss per epoch of each variant's runs (``RunResult``s), mean ± std over seeds."""
    def series(key: str) -> Series:
        return {name: [[h[key] for h in r.history] for r in rs] for name, rs in runs.items()}

    return curves(path, [("Validation accuracy", "accuracy", series("accuracy")),
                         ("Validation loss", "cross-entropy", series("valid_loss"))], log_y=(False, True), title=title)


def sweep(path: Path, accuracy: Mapping[str, Mapping[float, Sequence[float]]], threshold: float,
          title: str = "Learning-rate sweep") -> Path:
    """Final validation accuracy against the learning rate (log axis), mean ± std, with the "trains" line."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for variant, by_lr in accuracy.items():
        lrs = sorted(by_lr)
        stats = [(np.mean(by_lr[lr]), np.std(by_lr[lr], ddof=1) if len(by_lr[lr]) > 1 else 0.0) for lr in lrs]
        ax.errorbar(lrs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=variant)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"trains (≥ {threshold:.2f})")
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="final valid accuracy", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars(path: Path, panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]], title: str = "") -> Path:
    """Grouped bars, one panel per metric: mean over seeds with a ± std error bar."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.3), squeeze=False)
    for ax, (ylabel, by_variant) in zip(axes[0], panels, strict=True):
        names = list(by_variant)
        means = [float(np.mean(by_variant[n])) if len(by_variant[n]) else np.nan for n in names]
        stds = [float(np.std(by_variant[n], ddof=1)) if len(by_variant[n]) > 1 else 0.0 for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set(ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def depth_lines(path: Path, panels: Sequence[tuple[str, Mapping[str, Mapping[int, Sequence[float]]]]],
                title: str = "") -> Path:
    """A metric against depth, one line per family (plain, residual), mean ± std error bars."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (ylabel, families) in zip(axes[0], panels, strict=True):
        for family, by_depth in families.items():
            depths = sorted(by_depth)
            means = [float(np.mean(by_depth[d])) for d in depths]
            stds = [float(np.std(by_depth[d], ddof=1)) if len(by_depth[d]) > 1 else 0.0 for d in depths]
            ax.errorbar(depths, means, yerr=stds, marker="o", capsize=3, label=family)
        ax.set(xlabel="depth (layers)", ylabel=ylabel)
        ax.set_xticks(sorted({d for f in families.values() for d in f}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
