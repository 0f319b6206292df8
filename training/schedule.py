"""The learning rate: lr_max from ``lr_find`` (or as given), and the schedule that trains with it.

The schedules are described with ``settings.SCHEDULES``; with ``--pretrained`` fastai's ``fine_tune`` replaces
them (frozen body first, then everything with discriminative learning rates). fastai is imported where it runs, so
``step_schedule`` and ``lr_find_iterations`` stay cheap to import.
"""

from __future__ import annotations

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


def lr_find_iterations(steps_per_epoch: int, total_steps: int) -> int:
    """lr_find's mini-batches: at most two epochs' worth and half the training it tunes, at least 16 (a curve
    needs some points), at most fastai's default 100."""
    return max(16, min(100, 2 * steps_per_epoch, total_steps // 2))


@dataclass(frozen=True)
class LrFind:
    """One lr_find: the loss curve, the lr chosen from it, and what it cost."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    valley: float
    iterations: int
    seconds: float


def find_lr(learn: Learner, num_it: int) -> LrFind:
    """Run lr_find for ``num_it`` mini-batches and choose lr_max from its curve."""
    from fastai.callback.schedule import minimum, steep, valley

    t0 = time.perf_counter()
    with learn.no_bar():
        suggestion = learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=(steep, valley, minimum))
    # "steep" (steepest descent of the loss) rather than fastai's default "valley": on runs from scratch
    # valley moved 10× between seeds here and under-trained one-cycle (97–98 % vs 99 % on digits).
    # On a few dozen images the loss curve is noise and "steep" can land at 1e-6 (no training at all), so
    # it is floored at a tenth of fastai's "minimum" (itself a tenth of the loss minimum's lr).
    lr = max(float(suggestion.steep), float(suggestion.minimum) / 10)
    return LrFind(lrs=[float(x) for x in learn.recorder.lrs], losses=[float(x) for x in learn.recorder.losses],
                  suggestion=lr, valley=float(suggestion.valley), iterations=num_it,
                  seconds=time.perf_counter() - t0)


def train(cfg: FitConfig, learn: Learner, lr: float, cbs: list[Callback], say: Callable[[str], None]) -> float:
    """Train with ``cfg``'s schedule (or ``fine_tune`` from a pretrained body); returns the seconds it took."""
    t0 = time.perf_counter()
    if cfg.fine_tune:
        say(f"fine_tune: {cfg.freeze_epochs} epoch(s) with the body frozen, then {cfg.epochs} with discriminative "
            f"learning rates (body lr/100 … head lr)")
        learn.fine_tune(cfg.epochs, lr, freeze_epochs=cfg.freeze_epochs, cbs=cbs)
    elif cfg.schedule == "one-cycle":
        learn.fit_one_cycle(cfg.epochs, lr, cbs=cbs)
    elif cfg.schedule == "constant":
        learn.fit(cfg.epochs, lr, cbs=cbs)
    else:
        from fastai.callback.schedule import ParamScheduler

        learn.fit(cfg.epochs, lr, cbs=[*cbs, ParamScheduler({"lr": step_schedule(lr)})])
    return time.perf_counter() - t0
