"""Learning-rate schedules: fastai's one-cycle policy vs a constant rate vs a step schedule (Smith 2018), with the
momentum schedule separated from the learning-rate schedule.

Claim under test: at the same epoch budget and the same peak learning rate, one-cycle (warm-up, then annealing to
almost zero, with momentum cycled the other way) converges further than a constant rate, and at least as far as
the classic step schedule (÷10 at 50 % and 75 % of training, He et al. 2015).

fit_one_cycle changes two things at once: the learning rate and Adam's β1 (0.95 → 0.85 → 0.95), where the other
schedules hold β1 at 0.9. The six variants cross the three lr schedules with the two momentum schedules, so each
effect can be read with the other held fixed. Every run also evaluates on the validation set four times per epoch,
so that "time to accuracy" is measured in iterations and in training seconds, not only in whole epochs.
"""

from __future__ import annotations

from pathlib import Path

from training.experiments import figures
from training.experiments.report import Report, Table
from training.experiments.runner import (
    RunResult,
    RunSpec,
    Settings,
    by_variant,
    data_line,
    epochs_to_target,
    iterations_to_stay,
    iterations_to_target,
    seed_list,
    train_seconds_to_target,
)
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "one-cycle"
TITLE = "One-cycle vs constant vs step learning rate, with the momentum schedule separated"
DEFAULTS = {"seeds": 5, "epochs": 5, "lr": 3e-3, "target": 0.95}
SCHEDULES = ("one-cycle", "constant", "step")
CYCLED = "0.95 → 0.85 → 0.95"
# variant → (lr schedule, momentum): None keeps the schedule's own (one-cycle cycles β1, the others hold 0.9).
VARIANTS: dict[str, tuple[str, float | str | None]] = {
    "one-cycle": ("one-cycle", None),
    "one-cycle lr, mom 0.9": ("one-cycle", 0.9),
    "step": ("step", None),
    "step lr, mom cycled": ("step", "cycled"),
    "constant": ("constant", None),
    "constant lr, mom cycled": ("constant", "cycled"),
}
EVALS_PER_EPOCH = 4


def plan(s: Settings) -> list[RunSpec]:
    return [RunSpec(name, s.arch, seed, s.lr, s.epochs, schedule=schedule, momentum=momentum, measure_train=True,
                    evals_per_epoch=EVALS_PER_EPOCH)
            for seed in range(s.seeds) for name, (schedule, momentum) in VARIANTS.items()]


def _momentum(name: str) -> str:
    schedule, momentum = VARIANTS[name]
    cycled = momentum == "cycled" or (momentum is None and schedule == "one-cycle")
    return CYCLED if cycled else "0.9"


def _columns(runs: list[RunResult], target: float, epochs: int) -> dict[str, list]:
    """Every per-run number the tables and comparisons use."""
    cols: dict[str, list] = {key: [getattr(r, key) for r in runs] for key in ("valid_accuracy", "valid_loss",
                                                                             "train_loss")}
    cols["epochs_to_target"] = [epochs_to_target(r, target) for r in runs]
    cols["iterations_to_target"] = [iterations_to_target(r, target) for r in runs]
    cols["seconds_to_target"] = [train_seconds_to_target(r, target) for r in runs]
    cols["iterations_to_stay"] = [iterations_to_stay(r, target) for r in runs]
    cols["seconds_per_epoch"] = [r.train_seconds / r.spec.epochs for r in runs]
    for e in range(1, epochs):
        cols[f"accuracy_epoch_{e}"] = [r.history[e - 1]["accuracy"] if len(r.history) >= e else None for r in runs]
    return cols


def _tables(s: Settings, cols: dict[str, dict[str, list]], epochs: int, lr: float, every: int) -> list[Table]:
    pct = f"{s.target:.0%}"
    final = Table(
        f"After {epochs} epochs with peak lr {lr:g}, mean ± std over {s.seeds} seed(s); training loss measured after "
        "training over the whole training set (eval mode)",
        ["variant", "lr schedule", "momentum (β1)", "valid accuracy", "valid loss", "train loss", "reached"],
        [[name, VARIANTS[name][0], _momentum(name), fmt_values(c["valid_accuracy"]), fmt_values(c["valid_loss"]),
          fmt_values(c["train_loss"]), f"{sum(x is not None for x in c['epochs_to_target'])}/{len(c['valid_loss'])}"]
         for name, c in cols.items()])
    early = [f"accuracy after epoch {e}" for e in range(1, epochs)]
    timing = Table(
        f"Time to accuracy: validation accuracy at the end of the first epochs, and when {pct} is first reached "
        f"(evaluated every {every} iterations; training seconds count the training batches only)",
        ["variant", *early, f"epochs to {pct}", f"iterations to {pct}", f"training seconds to {pct}",
         f"iterations to ≥ {pct} for good", "seconds / epoch"],
        [[name, *(fmt_values(c[f"accuracy_epoch_{e}"]) for e in range(1, epochs)),
          fmt_values(c["epochs_to_target"], 2), fmt_values(c["iterations_to_target"], 1),
          fmt_values(c["seconds_to_target"], 1), fmt_values(c["iterations_to_stay"], 1),
          fmt_values(c["seconds_per_epoch"], 2)] for name, c in cols.items()])
    return [final, timing]


# (a, b, what the pair isolates, metrics): every comparison the report draws.
FINAL = (("final valid accuracy", "valid_accuracy"), ("final valid loss", "valid_loss"),
         ("final training loss", "train_loss"))
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("one-cycle", "one-cycle lr, mom 0.9", "momentum, with the one-cycle lr"),
    ("step lr, mom cycled", "step", "momentum, with the step lr"),
    ("constant lr, mom cycled", "constant", "momentum, with a constant lr"),
    ("one-cycle lr, mom 0.9", "step", "lr schedule, at momentum 0.9"),
    ("one-cycle lr, mom 0.9", "constant", "lr schedule, at momentum 0.9"),
)


def _compare(cols: dict[str, dict[str, list]], a: str, b: str, metric: str, key: str, digits: int = 4) -> Comparison:
    return compare(metric, a, cols[a][key], b, cols[b][key], digits=digits)


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    main = by_variant(results)
    pct = f"{s.target:.0%}"
    first = results[0]
    epochs, lr = first.spec.epochs, first.spec.lr
    every = max(1, first.iters_per_epoch // EVALS_PER_EPOCH)
    cols = {name: _columns(runs, s.target, epochs) for name, runs in main.items()}
    summary = {"target": s.target, "variants": {name: {k: mean_std(v) for k, v in c.items()}
                                                for name, c in cols.items()}}

    comparisons: list[Comparison] = []
    findings: list[str] = []
    final = {}
    for other in ("constant", "step"):
        final[other] = pair = [_compare(cols, "one-cycle", other, metric, key) for metric, key in FINAL]
        comparisons += pair
        findings.append(_finding(other, pair))
    ablation = []
    for a, b, what in PAIRS:
        pair = [_compare(cols, a, b, "final valid accuracy", "valid_accuracy"),
                _compare(cols, a, b, f"iterations to {pct}", "iterations_to_target", digits=1)]
        comparisons += pair
        ablation.append((what, pair))
    findings += _ablation_findings(ablation)
    timing = [_compare(cols, "one-cycle", "step", f"iterations to {pct}", "iterations_to_target", digits=1),
              _compare(cols, "one-cycle", "step", f"training seconds to {pct}", "seconds_to_target", digits=1),
              _compare(cols, "one-cycle", "step", f"iterations to ≥ {pct} for good", "iterations_to_stay", digits=1),
              _compare(cols, "one-cycle", "step", f"epochs to {pct}", "epochs_to_target", digits=2)]
    if epochs > 1:
        timing.append(_compare(cols, "one-cycle", "step", "accuracy after epoch 1", "accuracy_epoch_1"))
    comparisons += timing
    findings.append(_time_finding(timing, pct))
    plain = [_attribution(final["constant"][0], ablation),
             _against_step(final["step"][0], final["constant"][0], timing, pct)]

    _plots(out, main, first, lr, s.target, every)
    return Report(
        name=NAME, title=TITLE,
        question=("Does the one-cycle policy converge further, or faster, than a constant learning rate or a step "
                  "schedule in the same number of epochs — and is that the learning-rate schedule or the momentum "
                  "schedule that comes with it? The same network is trained six times per seed with the same peak "
                  "learning rate: three lr schedules, each with momentum cycled and held at 0.9."),
        setup=[data_line(s, first),
               f"Network: {first.spec.arch}; {epochs} epochs, peak lr {lr:g}, batch {s.bs}, Adam, weight decay "
               f"0.01, {seed_list(s.seeds)}.",
               "one-cycle lr: fastai's fit_one_cycle — lr warms up from lr/25 over 25 % of the iterations, then "
               "anneals (cosine) to lr/100000.",
               "step lr: the peak lr, ÷10 after 50 % and again after 75 % of the iterations.",
               "constant lr: the peak lr throughout.",
               f"Momentum (Adam's β1): cycled {CYCLED} (cosine, turning at 25 %, as fit_one_cycle does) or held at "
               "0.9 (Adam's default, what constant and step get from fastai). 'one-cycle' is fastai's policy as "
               "shipped (both cycled); 'one-cycle lr, mom 0.9' changes only the momentum; 'step lr, mom cycled' and "
               "'constant lr, mom cycled' give the other schedules one-cycle's momentum.",
               f"Validation accuracy is measured every {every} training iterations and at the end of each epoch; "
               "time to accuracy counts iterations, and training seconds of the training batches alone, both to the "
               "first evaluation at the target and to the first from which every later one stays at or above it."],
        tables=_tables(s, cols, epochs, lr, every), comparisons=comparisons, findings=findings,
        plots=[("Learning rate and momentum (seed 0) and training loss per batch", "schedule.png"),
               ("Validation accuracy and loss per epoch", "curves.png"),
               (f"Validation accuracy against iterations and training seconds (target {pct} dashed)",
                "time_to_accuracy.png")],
        notes=["step and constant (and their 'mom cycled' twins) are the same run until 50 % of the iterations, "
               "where step first divides the lr: same seed, same lr, same momentum until then.",
               "All variants use the same peak learning rate, so the comparison asks what the schedule adds at that "
               "rate; a constant rate tuned separately (lower) could do better than it does here.",
               "Seconds are wall-clock on a machine shared with other jobs: compare them within this report only; "
               "iterations are the machine-independent measure."],
        summary=summary,
        sections=[("In plain words", plain)],
    )


def _plots(out: Path, main: dict[str, list[RunResult]], first: RunResult, lr: float, target: float,
           every: int) -> None:
    window = max(1, first.iters_per_epoch // 2)
    figures.curves(out / "schedule.png", [
        ("Learning rate", "learning rate", {n: [r.batch_lrs for r in main[n][:1]] for n in main}),
        ("Momentum (Adam's β1)", "β1", {n: [r.batch_moms for r in main[n][:1]] for n in main}),
        ("Training loss (per batch, smoothed)", "cross-entropy",
         {n: [figures.smooth(r.batch_losses, window) for r in rs] for n, rs in main.items()}),
    ], xlabel="iteration", log_y=(False, False, True))
    figures.validation_curves(out / "curves.png", main, f"{first.spec.arch}, peak lr {lr:g}, mean ± std over seeds")

    def accuracy(x_key: str) -> dict[str, tuple[list[float], list[list[float]]]]:
        """Per variant: x (mean over seeds at each evaluation) and each seed's accuracies."""
        series = {}
        for name, runs in main.items():
            evals = [r.evals or [] for r in runs]
            n = min(len(e) for e in evals)
            xs = [sum(e[i][x_key] for e in evals) / len(evals) for i in range(n)]
            series[name] = (xs, [[e[i]["accuracy"] for i in range(n)] for e in evals])
        return series

    figures.lines(out / "time_to_accuracy.png", [
        ("Validation accuracy", f"iteration (evaluated every {every})", "accuracy", accuracy("iteration")),
        ("Validation accuracy", "training seconds (mean over seeds)", "accuracy", accuracy("seconds")),
    ], hline=target, ylim=(max(0.0, target - 0.15), 1.0))


def _finding(other: str, pair: list[Comparison]) -> str:
    acc = pair[0]
    if all(c.verdict == "does not show" for c in pair):
        return (f"one-cycle vs {other}: no difference shows on this data in accuracy, validation loss or training "
                f"loss ({acc.detail}).")
    parts = []
    for c in pair:
        if c.verdict == "shows":
            one_cycle_better = (c.diff > 0) == (c is acc)  # higher accuracy, lower losses are better
            parts.append(f"{c.metric} {'better' if one_cycle_better else 'worse'} with one-cycle ({c.detail})")
        else:
            parts.append(f"{c.metric}: {'cannot tell' if c.verdict == 'cannot tell' else 'no difference shows'}")
    return f"one-cycle vs {other}: " + "; ".join(parts) + "."


def _effect(c: Comparison, higher_is_better: bool) -> str:
    """One comparison in words, from a's side."""
    if c.verdict == "cannot tell":
        return f"{c.metric}: cannot tell ({c.detail})"
    if c.verdict == "does not show":
        return f"{c.metric}: no difference shows ({c.a} {c.mean_a:.4g} vs {c.b} {c.mean_b:.4g})"
    better = (c.diff > 0) == higher_is_better
    return f"{c.metric} {'better' if better else 'worse'} for {c.a} ({c.detail})"


def _ablation_findings(ablation: list[tuple[str, list[Comparison]]]) -> list[str]:
    out = []
    for what, (acc, iters) in ablation:
        out.append(f"{what[0].upper()}{what[1:]} ({acc.a} vs {acc.b}): {_effect(acc, True)}; "
                   f"{_effect(iters, False)}.")
    return out


def _shows(c: Comparison, sign: int) -> bool:
    """The difference shows, in the direction ``sign`` (+1: a above b)."""
    return c.verdict == "shows" and c.diff is not None and c.diff * sign > 0


def _attribution(vs_constant: Comparison, ablation: list[tuple[str, list[Comparison]]]) -> str:
    """Which of the two schedules one-cycle's gain over a constant rate comes from, as far as the data says."""
    momentum = [pair[0] for what, pair in ablation if what.startswith("momentum")]
    lr_only = next(pair[0] for what, pair in ablation if what.startswith("lr") and pair[0].b == "constant")
    moved = [c for c in momentum if c.verdict == "shows"]
    mom = ("Cycling momentum instead of holding it at 0.9 made no difference that shows in final accuracy, with any "
           "of the three lr schedules" if not moved else
           "Cycling momentum changed the final accuracy with " + ", ".join(f"{c.a} ({c.detail})" for c in moved))
    if not _shows(vs_constant, +1):
        return f"{mom}. One-cycle did not end measurably above a constant rate here, so there is no gain to attribute."
    if _shows(lr_only, +1) and not moved:
        return (f"{mom}; the one-cycle lr schedule with momentum held at 0.9 ends as far above a constant rate as "
                f"the full policy ({lr_only.detail}). On this data one-cycle's gain over a constant rate is its "
                "learning-rate schedule's, not its momentum schedule's.")
    return (f"{mom}; the one-cycle lr schedule alone, at momentum 0.9, vs a constant rate: "
            f"{_effect(lr_only, True)}. The data do not single out one of the two schedules.")


def _against_step(vs_step: Comparison, vs_constant: Comparison, timing: list[Comparison], pct: str) -> str:
    """Where one-cycle stands against the step schedule, including where it does not win."""
    first, _, stay, epochs, *early = timing
    end = ("ends where the step schedule ends (final accuracy: no difference shows)" if vs_step.verdict != "shows"
           else f"ends {'above' if vs_step.diff > 0 else 'below'} the step schedule ({vs_step.detail})")
    parts = [f"Against the step schedule one-cycle {end}."]
    if early and _shows(early[0], -1):
        parts.append(f"It starts slower: after one epoch {early[0].mean_a:.1%} against {early[0].mean_b:.1%}, "
                     "while its lr is still warming up.")
    reach = ("at the same point as step" if first.verdict != "shows" else
             f"{'later' if first.diff > 0 else 'earlier'} than step ({first.detail})")
    settle = ("" if stay.verdict != "shows" else
              f", but stays at or above it from {stay.mean_a:.0f} iterations against step's {stay.mean_b:.0f} "
              f"({stay.detail.split(', ', 1)[1]})")
    if _shows(epochs, +1):
        parts.append(f"Checked at the end of each epoch it is at {pct} later ({epochs.mean_a:.1f} against "
                     f"{epochs.mean_b:.1f} epochs).")
    parts.append(f"Counted in iterations (evaluated four times per epoch) it first reaches {pct} {reach}{settle}.")
    if not _shows(vs_step, +1):
        parts.append("On this data and this budget one-cycle does not beat the step schedule"
                     + ("; its advantage is over a constant rate." if _shows(vs_constant, +1) else "."))
    return " ".join(parts)


def _time_finding(timing: list[Comparison], pct: str) -> str:
    iters = timing[0]
    lead = f"Time to {pct}, one-cycle vs step: "
    if iters.verdict == "shows" and iters.diff > 0:
        lead += f"step gets there first — this is where one-cycle does not win ({iters.detail})"
    elif iters.verdict == "shows":
        lead += f"one-cycle gets there first ({iters.detail})"
    else:
        lead += f"{'cannot tell' if iters.verdict == 'cannot tell' else 'no difference shows'} ({iters.detail})"
    rest = "; ".join(_effect(c, c.metric.startswith("accuracy")) for c in timing[1:])
    return lead + (f"; {rest}." if rest else ".") + (
        " (First reaching the target and staying above it differ: a run at a high learning rate can touch it and "
        "fall back.)")
