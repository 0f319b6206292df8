"""Learning-rate schedules: fastai's one-cycle policy vs a constant rate vs a step schedule (Smith 2018).

Claim under test: at the same epoch budget and the same peak learning rate, one-cycle (warm-up, then annealing to
almost zero, with momentum cycled the other way) converges further than a constant rate, and at least as far as
the classic step schedule (÷10 at 50 % and 75 % of training, He et al. 2015).
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
    seed_list,
)
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "one-cycle"
TITLE = "One-cycle vs constant vs step learning rate, same epoch budget"
DEFAULTS = {"seeds": 5, "epochs": 5, "lr": 3e-3, "target": 0.95}
SCHEDULES = ("one-cycle", "constant", "step")


def plan(s: Settings) -> list[RunSpec]:
    epochs, lr = s.epochs, s.lr
    return [RunSpec(name, s.arch, seed, lr, epochs, schedule=name, measure_train=True)
            for seed in range(s.seeds) for name in SCHEDULES]


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    main = by_variant(results)
    target = s.target
    pct = f"{target:.0%}"
    first = results[0]
    epochs, lr = first.spec.epochs, first.spec.lr

    def values(name: str, key: str) -> list[float | None]:
        return [getattr(r, key) for r in main[name]]

    rows, summary = [], {"target": target, "variants": {}}
    for name, runs in main.items():
        cols = {"valid_accuracy": values(name, "valid_accuracy"), "valid_loss": values(name, "valid_loss"),
                "train_loss": values(name, "train_loss"),
                "epochs_to_target": [epochs_to_target(r, target) for r in runs]}
        reached = sum(x is not None for x in cols["epochs_to_target"])
        summary["variants"][name] = {**{k: mean_std(v) for k, v in cols.items()}, "reached": reached}
        rows.append([name, fmt_values(cols["valid_accuracy"]), fmt_values(cols["valid_loss"]),
                     fmt_values(cols["train_loss"]), fmt_values(cols["epochs_to_target"], 2),
                     f"{reached}/{len(runs)}"])
    table = Table(f"After {epochs} epochs with peak lr {lr:g}, mean ± std over {s.seeds} seed(s); training loss "
                  "measured after training over the whole training set (eval mode)",
                  ["schedule", "valid accuracy", "valid loss", "train loss", f"epochs to {pct}", "reached"], rows)

    comparisons: list[Comparison] = []
    findings: list[str] = []
    for other in ("constant", "step"):
        pair = [compare(metric, "one-cycle", values("one-cycle", key), other, values(other, key))
                for metric, key in (("final valid accuracy", "valid_accuracy"), ("final valid loss", "valid_loss"),
                                    ("final training loss", "train_loss"))]
        comparisons += pair
        findings.append(_finding(other, pair))

    window = max(1, first.iters_per_epoch // 2)
    figures.curves(out / "schedule.png", [
        ("Learning rate", "learning rate", {n: [r.batch_lrs for r in main[n][:1]] for n in main}),
        ("Training loss (per batch, smoothed)", "cross-entropy",
         {n: [figures.smooth(r.batch_losses, window) for r in rs] for n, rs in main.items()}),
    ], xlabel="iteration", log_y=(False, True))
    figures.validation_curves(out / "curves.png", main, f"{first.spec.arch}, peak lr {lr:g}, mean ± std over seeds")

    return Report(
        name=NAME, title=TITLE,
        question=("Does the one-cycle policy converge further than a constant learning rate, or a step schedule, in "
                  "the same number of epochs? The same network is trained three times per seed with the same peak "
                  "learning rate; only the schedule changes."),
        setup=[data_line(s, first),
               f"Network: {first.spec.arch}; {epochs} epochs, peak lr {lr:g}, batch {s.bs}, Adam, weight decay "
               f"0.01, {seed_list(s.seeds)}.",
               "one-cycle: fastai's fit_one_cycle — lr warms up from lr/25 over 25 % of the iterations, then "
               "anneals (cosine) to lr/100000; momentum goes 0.95 → 0.85 → 0.95.",
               "constant: the peak lr throughout (momentum 0.9).",
               "step: the peak lr, ÷10 after 50 % and again after 75 % of the iterations (momentum 0.9)."],
        tables=[table], comparisons=comparisons, findings=findings,
        plots=[("Learning rate (seed 0) and training loss per batch", "schedule.png"),
               ("Validation accuracy and loss per epoch", "curves.png")],
        notes=["All three use the same peak learning rate, so the comparison asks what the schedule adds at that "
               "rate; a constant rate tuned separately (lower) could do better than it does here."],
        summary=summary,
    )


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
