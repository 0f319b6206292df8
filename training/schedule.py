"""The learning rate: lr_max from ``lr_find`` (or as given), and the schedule that trains with it.

The schedules are described with ``settings.SCHEDULES``; with ``--pretrained`` fastai's ``fine_tune`` replaces
them (frozen body first, then everything with discriminative learning rates). fastai is imported where it runs, so
``step_schedule`` and the lr_find rules stay cheap to import.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.settings import FitConfig

if TYPE_CHECKING:
    from fastai.callback.core import Callback
    from fastai.learner import Learner

STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1


def step_schedule(lr_max: float, milestones: Sequence[float] = STEP_MILESTONES,
                  gamma: float = STEP_GAMMA) -> Callable[[float], float]:
    """lr as a function of the training position in [0, 1] (fastai's ParamScheduler convention): lr_max,
    multiplied by ``gamma`` at each milestone passed."""
    def lr_at(pos: float) -> float:
        return lr_max * gamma ** sum(pos >= m for m in milestones)

    return lr_at


# lr_find: fastai's sweep of the rate from 1e-7 to 10 over 100 mini-batches (cycling through the data when an epoch
# is shorter), stopped when the smoothed loss passes 4× its lowest value. A short curve is not a shorter version of
# the same curve: fastai's loss average (β = 0.98) spans about 50 mini-batches, so on a 16-batch sweep it is the mean
# of everything since the start, and its steepest point is noise (docs/training.md: 16 batches chose 1e-4 and
# 3e-7 on a 400-image folder). Its cost is bounded instead: LR_FIND_PROBE batches at the start rate time one step,
# and the sweep takes as many of its 100 batches as max(20 s, half the training) leaves room for.
LR_FIND_START, LR_FIND_END = 1e-7, 10.0
LR_FIND_ITERATIONS = 100
LR_FIND_PROBE = 3
LR_FIND_SECONDS = 20.0
# Below this a sweep is too coarse to read: the rate falls back to fastai's default. (Measured, docs/training.md: at
# 25 batches the rule's rate spread over 1.6 decades between seeds, 1.4e-3 … 5.8e-2; at 50, under one.)
LR_FIND_MIN_SWEEP = 40
LR_FIND_SKIP = 10
# A suggestion outside this range is not a rate to train with (1e-5 moves nothing in a few epochs; above 1, Adam
# diverges); nor is one from a curve whose loss never fell by LR_FIND_FELL of where it started.
LR_RANGE = (1e-5, 1.0)
LR_FIND_FELL = 0.10
# fastai's own defaults: Learner's lr for fit_one_cycle, fine_tune's base_lr.
FASTAI_LR = 1e-3
FASTAI_FINE_TUNE_LR = 2e-3


def training_batches(cfg: FitConfig, steps_per_epoch: int) -> int:
    """The mini-batches the training runs: every epoch, and fine_tune's frozen ones too."""
    return steps_per_epoch * (cfg.epochs + (cfg.freeze_epochs if cfg.fine_tune else 0))


def lr_find_budget(step_seconds: float, batches: int) -> float:
    """lr_find's time budget: max(20 s, half the training), the training estimated as ``batches`` steps of
    ``step_seconds`` (a step of lr_find is a step of training on the same batch)."""
    return max(LR_FIND_SECONDS, 0.5 * step_seconds * batches)


def sweep_length(room_seconds: float, step_seconds: float) -> int:
    """The sweep's mini-batches: fastai's 100, or as many as ``room_seconds`` holds."""
    return max(0, min(LR_FIND_ITERATIONS, int(room_seconds / step_seconds) if step_seconds > 0 else LR_FIND_ITERATIONS))


def fallback_lr(cfg: FitConfig) -> float:
    """fastai's default rate for the way ``cfg`` trains: fine_tune's 2e-3, or the Learner's 1e-3."""
    return FASTAI_FINE_TUNE_LR if cfg.fine_tune else FASTAI_LR


@dataclass(frozen=True)
class LrFind:
    """One lr_find: its curve (the sweep's rates and fastai's smoothed losses), what the rule read from it, and
    what it cost."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None    # steepest descent, at least a tenth of fastai's "minimum"; None: no curve to read
    valley: float | None        # fastai's default suggestion, for the record
    iterations: int             # mini-batches run, the probe's included
    sweep: int                  # the sweep's planned mini-batches
    stop: str                   # "end" (the whole sweep), "diverged", or "budget" (out of time)
    seconds: float
    budget_seconds: float
    step_seconds: float


@dataclass(frozen=True)
class LrChoice:
    """The rate the training runs with, where it came from, and why (one line)."""

    lr: float
    source: str                 # "given" (--lr), "lr_find", or "fallback" (fastai's default; lr_find's curve unusable)
    reason: str
    found: LrFind | None = None


def read_curve(found: LrFind, fallback: float) -> LrChoice:
    """lr_find's suggestion when its curve can be trusted, else ``fallback`` with the reason."""
    def back(why: str) -> LrChoice:
        return LrChoice(fallback, "fallback", f"{why}; fastai's default {fallback:g} instead", found)

    took = f"{found.iterations} mini-batches, {found.seconds:.1f} s"
    budget = f"its budget of {found.budget_seconds:.0f} s (max({LR_FIND_SECONDS:g} s, half the training))"
    if found.stop == "budget" and not found.sweep:
        return back(f"lr_find had no room for a sweep: one step takes {found.step_seconds:.2f} s, and "
                    f"{budget} holds fewer than the {LR_FIND_MIN_SWEEP} a sweep needs")
    if found.stop == "budget" and len(found.lrs) < LR_FIND_MIN_SWEEP:
        return back(f"lr_find ran out of {budget} at lr {found.lrs[-1]:.2g}, {len(found.lrs)} mini-batches into "
                    f"its sweep of {found.sweep}")
    if found.stop == "budget":  # cut short, but long enough to read: up to where it got
        took += f"; out of time at lr {found.lrs[-1]:.2g}"
    if found.suggestion is None:
        return back(f"lr_find's curve is too short to read ({took})")
    read = [v for v in found.losses[_skipped(found.sweep):] if not math.isnan(v)]  # NaN: a diverged step
    start, lowest = read[0], min(read)
    if lowest > (1 - LR_FIND_FELL) * start:
        return back(f"lr_find's loss never fell (lowest {lowest:.3g} against {start:.3g} at the start; {took})")
    lo, hi = LR_RANGE
    if not lo <= found.suggestion <= hi:
        return back(f"lr_find suggested {found.suggestion:.3g}, outside [{lo:g}, {hi:g}] ({took})")
    return LrChoice(found.suggestion, "lr_find", f"lr_find: steepest descent of the loss from 1e-5 up, at least 1/100 "
                    f"of the loss minimum's lr ({took})", found)


def _skipped(sweep: int) -> int:
    """The sweep's first points that the suggestions leave out: fastai's tenth of the sweep, and never fewer than
    the 10 of its 100-batch sweep. There the loss average (debiased, β = 0.98) still rests on a handful of
    mini-batches, and its wobble can be the steepest slope of a flat start: on a 49-batch sweep of the 156 photos
    "steep" fell at 1e-6 and the rule at 3.7e-5 (0.92 after 4 epochs); leaving out 10 points, 1.3e-4."""
    return max(sweep // 10, LR_FIND_SKIP)


def suggest(lrs: list[float], losses: list[float], sweep: int) -> tuple[float, float] | None:
    """(rule, valley) from a curve, read as fastai's ``lr_find`` reads it: without its first points (``_skipped``) and
    its last 5; None when fewer than 3 points remain."""
    import torch
    from fastai.callback.schedule import minimum, steep, valley

    x, y = torch.tensor(lrs[_skipped(sweep):-5]), torch.tensor(losses[_skipped(sweep):-5])
    finite = ~torch.isnan(y)
    if not bool(finite.all()):
        cut = int(torch.nonzero(~finite)[0])
        x, y = x[:cut], y[:cut]
    if len(y) < 3:
        return None
    # "steep" (steepest descent of the loss) rather than fastai's default "valley": on runs from scratch
    # valley moved 10× between seeds here and under-trained one-cycle (97–98 % vs 99 % on digits).
    # It is looked for among the rates that can train (from 1e-5): below, the curve moves only by its average's
    # wobble, whose slope beat the real descent on short sweeps (1e-6 to 3e-6 on the 156 photos, docs/training.md).
    # On a few dozen images the loss curve is noise and "steep" can still land too low, so it is floored at a tenth
    # of fastai's "minimum" (itself a tenth of the loss minimum's lr).
    usable = x >= LR_RANGE[0]
    sx, sy = (x[usable], y[usable]) if int(usable.sum()) >= 2 else (x, y)
    rule = max(steep(sx, sy, sweep)[0], minimum(x, y, sweep)[0] / 10)
    return float(rule), float(valley(x, y, sweep)[0])


def find_lr(learn: Learner, batches: int) -> LrFind:
    """fastai's lr_find for a training of ``batches`` mini-batches, within its time budget (``lr_find_budget``);
    the model's weights are restored after."""
    finder = _budgeted_finder(batches)
    steps = len(learn.dls.train)
    with learn.no_bar(), learn.no_logging():
        learn.fit((LR_FIND_PROBE + LR_FIND_ITERATIONS) // steps + 1, cbs=finder)
    lrs = [float(x) for x in learn.recorder.lrs[LR_FIND_PROBE:]]
    losses = [float(x) for x in learn.recorder.losses[LR_FIND_PROBE:]]
    read = suggest(lrs, losses, finder.sweep) if finder.sweep else None
    return LrFind(lrs=lrs, losses=losses, suggestion=read[0] if read else None, valley=read[1] if read else None,
                  iterations=len(learn.recorder.losses), sweep=finder.sweep, stop=finder.stop,
                  seconds=time.perf_counter() - finder.started, budget_seconds=finder.budget_seconds,
                  step_seconds=finder.step_seconds)


def _budgeted_finder(batches: int) -> Callback:
    """fastai's ``LRFinder`` (it saves the model first and restores it after, and stops on divergence) with a probe
    and a time budget: the first LR_FIND_PROBE mini-batches run at the start rate and time a step; the sweep then
    takes the mini-batches the budget leaves room for, at most fastai's 100; fewer than LR_FIND_MIN_SWEEP: no sweep."""
    from fastai.callback.core import CancelFitException
    from fastai.callback.schedule import LRFinder, ParamScheduler

    class BudgetedLRFinder(LRFinder):
        def __init__(self) -> None:
            super().__init__(LR_FIND_START, LR_FIND_END, num_it=LR_FIND_PROBE + LR_FIND_ITERATIONS, stop_div=True)
            self.sweep, self.stop = 0, "end"
            self.started = self.timed = time.perf_counter()
            self.step_seconds, self.budget_seconds = 0.0, LR_FIND_SECONDS

        def before_fit(self) -> None:
            self.started = time.perf_counter()
            super().before_fit()

        def before_batch(self) -> None:
            self._update_val(max(0, self.train_iter - LR_FIND_PROBE) / max(1, self.sweep))

        def after_batch(self) -> None:
            ParamScheduler.after_batch(self)  # the rates, for the record
            now = time.perf_counter()
            if 1 < self.train_iter <= LR_FIND_PROBE:  # the first step pays for allocations: not timed
                # the quickest probe step: a stall of the machine in one step does not shorten the sweep
                step = now - self.timed
                self.step_seconds = min(self.step_seconds or step, step)
            self.timed = now
            if self.train_iter == LR_FIND_PROBE:
                self.budget_seconds = lr_find_budget(self.step_seconds, batches)
                self.sweep = sweep_length(self.budget_seconds - (now - self.started), self.step_seconds)
                if self.sweep < LR_FIND_MIN_SWEEP:
                    self.sweep, self.stop = 0, "budget"
                    raise CancelFitException()
            self.best_loss = min(self.best_loss, self.smooth_loss)
            if self.train_iter > LR_FIND_PROBE:
                if self.smooth_loss > 4 * self.best_loss:
                    self.stop = "diverged"
                    raise CancelFitException()
                if self.train_iter >= LR_FIND_PROBE + self.sweep:
                    raise CancelFitException()
                if now - self.started > self.budget_seconds:
                    self.stop = "budget"
                    raise CancelFitException()

    return BudgetedLRFinder()


def train(cfg: FitConfig, learn: Learner, lr: float, cbs: list[Callback], say: Callable[[str], None]) -> float:
    """Train with ``cfg``'s schedule (or ``fine_tune`` from a pretrained body); returns the seconds it took."""
    t0 = time.perf_counter()
    if cfg.fine_tune:
        say(f"fine_tune: {cfg.freeze_epochs} epoch(s) with the body frozen, then {cfg.epochs} with discriminative "
            f"learning rates (body lr/{cfg.lr_mult:g} … head lr)")
        learn.fine_tune(cfg.epochs, lr, freeze_epochs=cfg.freeze_epochs, lr_mult=cfg.lr_mult, cbs=cbs)
    elif cfg.schedule == "one-cycle":
        learn.fit_one_cycle(cfg.epochs, lr, cbs=cbs)
    elif cfg.schedule == "constant":
        learn.fit(cfg.epochs, lr, cbs=cbs)
    else:
        from fastai.callback.schedule import ParamScheduler

        learn.fit(cfg.epochs, lr, cbs=[*cbs, ParamScheduler({"lr": step_schedule(lr)})])
    return time.perf_counter() - t0
