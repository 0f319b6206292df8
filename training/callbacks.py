"""fastai callbacks of the training loop: the epoch history for metrics.json, one log line per epoch, and BatchNorm
statistics recomputed exactly after each epoch of a short training (:class:`PreciseBatchNorm`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _epoch_values(learn: Learner) -> dict[str, float]:
    """The Recorder's values of the epoch that just ended, by name (train_loss, valid_loss, metrics)."""
    rec = learn.recorder
    names = [n for n in rec.metric_names[1:] if n != "time"]
    return {n: float(v) for n, v in zip(names, rec.values[-1], strict=False)}


class EpochRecorder(Callback):
    """Per-epoch values and seconds, per-batch losses and hyper-parameters, kept across several fits (fine_tune
    fits twice, and fastai's Recorder starts afresh at each fit)."""

    order = 60  # after the Recorder (50) has the epoch's values

    def __init__(self, fine_tuning: bool) -> None:
        self.fine_tuning = fine_tuning
        self.rows: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.hps: dict[str, list[float]] = {}
        self.phase = "fit"

    def before_fit(self) -> None:
        if self.fine_tuning:  # fine_tune's first fit runs frozen (the optimizer trains the head group only)
            self.phase = "frozen" if getattr(self.learn.opt, "frozen_idx", 0) else "unfrozen"

    def before_epoch(self) -> None:
        self.started = time.perf_counter()

    def after_epoch(self) -> None:
        row = {"epoch": len(self.rows) + 1, **_epoch_values(self.learn),
               "seconds": round(time.perf_counter() - self.started, 3)}
        if self.phase != "fit":
            row["phase"] = self.phase
        self.rows.append(row)

    def after_fit(self) -> None:
        rec = self.learn.recorder
        self.losses += [float(x) for x in rec.losses]
        for k, v in getattr(rec, "hps", {}).items():
            self.hps.setdefault(k, []).extend(float(x) for x in v)


class PlainProgress(Callback):
    """One line per epoch, for logs and CI (fastai's bar redraws itself and floods a non-terminal)."""

    order = 65  # after the Recorder has filled in the epoch's values

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def after_epoch(self) -> None:
        values = " ".join(f"{n}={v:.4f}" for n, v in _epoch_values(self.learn).items())
        self.say(f"epoch {self.epoch + 1}/{self.n_epoch} {values}")


def progress(learn: Learner, log: Callable[[str], None], main: bool) -> list[Callback]:
    """The progress callbacks of this process: fastai's bar on a terminal; otherwise no bar, no raw value lists,
    and (rank 0) a :class:`PlainProgress` line per epoch."""
    if sys.stdout.isatty():
        return []
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None  # the Recorder would print raw value lists
    return [PlainProgress(log)] if main else []


# BatchNorm's running statistics are an exponential average with momentum 0.1: they still hold 0.9**k of their
# initial values (mean 0, variance 1) after k mini-batches, and they average activations of weights that the
# optimizer has since moved. One-cycle ends with the rate below 5 % of its peak over its last tenth; when that tenth is
# shorter than two of the average's 10-batch windows (fewer than 200 mini-batches in all) the statistics never
# settle. Measured on small folders (docs/training.md): a model whose exact statistics gave 0.90–1.00 validation
# accuracy scored 0.36–0.67 with the running ones, at every epoch.
PRECISE_BATCHNORM_BELOW = 200


def needs_precise_batchnorm(total_batches: int) -> bool:
    """Whether a training of ``total_batches`` mini-batches recomputes BatchNorm's statistics after each epoch."""
    return total_batches < PRECISE_BATCHNORM_BELOW


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def refresh_batchnorm(model: nn.Module, loader) -> None:
    """Replace every BatchNorm's running mean and variance by their exact averages over ``loader``'s batches, with
    ``model``'s current weights (the forward passes of training mode, without gradients)."""
    norms = batchnorms(model)
    momenta = [m.momentum for m in norms]
    training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: the cumulative average of every batch since the reset
    model.train()
    try:
        with torch.no_grad():
            for x, *_ in loader:
                model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(training)


class PreciseBatchNorm(Callback):
    """After each epoch's training batches (before validation), BatchNorm's statistics recomputed exactly over the
    training images as the model sees them at inference — un-augmented, each once (``loader``). The next epoch goes
    on updating them with the usual momentum."""

    order = 5  # before validation; nothing else acts on after_train

    def __init__(self, loader) -> None:
        self.loader = loader
        self.seconds = 0.0

    def after_train(self) -> None:
        started = time.perf_counter()
        refresh_batchnorm(getattr(self.learn.model, "module", self.learn.model), self.loader)  # not a DDP wrapper
        self.seconds += time.perf_counter() - started
