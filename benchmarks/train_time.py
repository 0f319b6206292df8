"""Row family ``training``: fastai's epochs against a bare PyTorch loop (``benchmarks.fastai_epoch``), and seconds of
training until digits first reaches 98.5 % validation accuracy.

Two runs of the project's trainer (``training.fit``) on digits (resnet20, 16 px, batch 32, seed 42) with the same
peak learning rate and the same epoch budget, differing only in the schedule: fastai's one-cycle, and a constant
rate. A callback records, after each epoch, the wall time since training started and the validation accuracy; a run
stops at the first epoch that reaches the target (one-cycle's schedule is fixed by the budget up front, so stopping
early changes nothing before that point) or when the budget is spent ("not reached"). A wall-clock cap per run
(``MAX_SECONDS``) keeps ``make bench`` bounded on a machine much slower than 2 idle cores; a run cut by it is
reported as such. The one-cycle run judges the accuracy target (``digits_accuracy``): met when it reaches 98.5 %,
not met when its epoch budget ends below, not measured when the cap cut it first.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.core import Context, Row, Stat
from benchmarks.targets import DIGITS_ACCURACY as TARGET_ACCURACY

EPOCHS, LR = 8, 1e-2
MAX_SECONDS = 120.0


def _stopper(target: float, max_seconds: float) -> Any:
    from fastai.callback.core import Callback, CancelFitException

    class StopAtTarget(Callback):
        order = 70  # after the Recorder has the epoch's metrics

        def before_fit(self) -> None:
            self.started = time.perf_counter()
            self.epochs: list[dict[str, float]] = []
            self.reached: dict[str, float] | None = None
            self.cut = False

        def after_batch(self) -> None:
            if time.perf_counter() - self.started > max_seconds:
                self.cut = True
                raise CancelFitException

        def after_epoch(self) -> None:
            names = [n for n in self.learn.recorder.metric_names[1:] if n != "time"]
            accuracy = float(dict(zip(names, self.learn.recorder.values[-1], strict=False))["accuracy"])
            point = {"epoch": self.epoch + 1, "seconds": time.perf_counter() - self.started, "accuracy": accuracy}
            self.epochs.append(point)
            if accuracy >= target:
                self.reached = point
                raise CancelFitException

    return StopAtTarget()


def _train(ctx: Context, schedule: str) -> dict[str, Any]:
    import torch

    from training.fit import fit
    from training.settings import FitConfig

    torch.set_num_threads(ctx.threads)
    stop = _stopper(TARGET_ACCURACY, MAX_SECONDS)
    ctx.log(f"training: digits, {schedule}, lr {LR}, up to {EPOCHS} epochs")
    fit(FitConfig(data="digits", arch="resnet20", epochs=EPOCHS, lr=LR, out=ctx.work / "train" / schedule,
                  plots=False, schedule=schedule), log=lambda msg: ctx.log(f"  fit: {msg}"), callbacks=[stop])
    if stop.cut:
        ctx.note(f"training {schedule}: stopped by the {MAX_SECONDS:.0f} s cap after {len(stop.epochs)} epochs")
    return {"reached": stop.reached, "epochs": stop.epochs, "cut_at_s": MAX_SECONDS if stop.cut else None}


def run(ctx: Context) -> list[Row]:
    found = {schedule: _train(ctx, schedule) for schedule in ("one-cycle", "constant")}

    def seconds(schedule: str) -> Stat | None:
        hit = found[schedule]["reached"]
        return Stat.one(hit["seconds"], "s") if hit else None

    def label(schedule: str) -> str:
        epochs = found[schedule]["epochs"]
        if found[schedule]["reached"] or not epochs:
            return schedule if epochs else f"{schedule}: no epoch finished"
        best = max(epochs, key=lambda e: e["accuracy"])
        return (f"{schedule}: not reached in {len(epochs)} epochs ({epochs[-1]['seconds']:.0f} s); best "
                f"{best['accuracy']:.2%} at epoch {best['epoch']}")

    one, const = seconds("one-cycle"), seconds("constant")
    ratio = const.median / one.median if one and const else None
    cycle = found["one-cycle"]
    # A run cut by the wall-clock cap says nothing about the accuracy the trainer reaches: not measured, not failed.
    met = True if one else (None if cycle["cut_at_s"] else False)
    if one:
        verdict = f"{TARGET_ACCURACY:.1%} reached at epoch {cycle['reached']['epoch']} ({one.median:.1f} s)"
    elif cycle["cut_at_s"]:
        verdict = f"cut by the {MAX_SECONDS:.0f} s cap after {len(cycle['epochs'])} epochs"
    else:
        verdict = f"{TARGET_ACCURACY:.1%} not reached in {len(cycle['epochs'])} epochs"
    from benchmarks import fastai_epoch

    schedules = Row("training", f"digits to {TARGET_ACCURACY:.1%} validation accuracy: one-cycle vs constant lr "
                    f"(lr {LR:g}, budget {EPOCHS} epochs, {ctx.threads} threads)",
                    label("constant"), const, label("one-cycle"), one, ratio,
                    ratio_label="time-to-target ratio (constant / one-cycle; > 1: one-cycle faster)",
                    target="digits_accuracy", met=met, verdict=verdict,
                    details={schedule: v for schedule, v in found.items()})
    return [*fastai_epoch.rows(ctx), schedules]
