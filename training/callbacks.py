"""fastai callbacks of the training loop: the epoch history for metrics.json, and one log line per epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner


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
