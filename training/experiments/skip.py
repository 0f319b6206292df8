"""Skip connections: plain vs residual networks at increasing depth (He et al. 2015, section 4.1).

Claim under test, the *degradation problem*: a deeper plain network reaches a *higher* training loss than a
shallower one (an optimisation failure, not overfitting), while the residual twin, with the same layers plus
identity shortcuts, does not degrade. The training loss is measured after training, in eval mode, over the whole
training set, so it is comparable across networks (the running loss of fastai's recorder is smoothed and taken in
train mode).
"""

from __future__ import annotations

from pathlib import Path

from training.experiments import figures
from training.experiments.report import Report, Table
from training.experiments.runner import RunResult, RunSpec, Settings, by_variant, data_line, training_line
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "skip"
TITLE = "Skip connections: plain vs residual networks at increasing depth"
DEFAULTS = {"seeds": 3, "epochs": 5, "lr": 3e-3}
FAMILIES = {"plain": "plain", "residual": "resnet"}   # family -> arch prefix


def plan(s: Settings) -> list[RunSpec]:
    epochs, lr = s.epochs, s.lr
    return [RunSpec(f"{prefix}{depth}", f"{prefix}{depth}", seed, lr, epochs, measure_train=True)
            for seed in range(s.seeds) for depth in sorted(s.depths) for prefix in FAMILIES.values()]


def _values(runs: list[RunResult], key: str) -> list[float | None]:
    return [getattr(r, key) for r in runs]


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    main = by_variant(results)
    depths = sorted(s.depths)
    first = results[0]
    epochs, lr = first.spec.epochs, first.spec.lr

    rows, summary = [], {"variants": {}}
    for depth in depths:
        for family, prefix in FAMILIES.items():
            runs = main[f"{prefix}{depth}"]
            cols = {"train_loss": _values(runs, "train_loss"), "train_accuracy": _values(runs, "train_accuracy"),
                    "valid_accuracy": _values(runs, "valid_accuracy"), "valid_loss": _values(runs, "valid_loss"),
                    "seconds_per_epoch": [r.train_seconds / r.spec.epochs for r in runs]}
            summary["variants"][f"{prefix}{depth}"] = {k: mean_std(v) for k, v in cols.items()}
            rows.append([str(depth), f"{family} ({prefix}{depth})", fmt_values(cols["train_loss"]),
                         fmt_values(cols["train_accuracy"]), fmt_values(cols["valid_accuracy"]),
                         fmt_values(cols["valid_loss"]), fmt_values(cols["seconds_per_epoch"], 2)])
    table = Table(f"After {epochs} epochs at peak lr {lr:g} (one-cycle), mean ± std over {s.seeds} seed(s); "
                  "training loss/accuracy measured after training over the whole training set (eval mode)",
                  ["depth", "network", "train loss", "train accuracy", "valid accuracy", "valid loss",
                   "seconds / epoch"], rows)

    comparisons: list[Comparison] = []
    findings: list[str] = []
    if len(depths) >= 2:
        lo, hi = depths[0], depths[-1]
        for prefix in FAMILIES.values():
            c = compare("final training loss", f"{prefix}{hi}", _values(main[f"{prefix}{hi}"], "train_loss"),
                        f"{prefix}{lo}", _values(main[f"{prefix}{lo}"], "train_loss"))
            comparisons.append(c)
            findings.append(_depth_finding(prefix, hi, lo, c))
    else:
        findings.append("Degradation: only one depth was trained; pass two or more with --depths (e.g. 20,56).")
    for depth in depths:
        c = compare("final training loss", f"resnet{depth}", _values(main[f"resnet{depth}"], "train_loss"),
                    f"plain{depth}", _values(main[f"plain{depth}"], "train_loss"))
        comparisons.append(c)
        comparisons.append(compare("final valid accuracy", f"resnet{depth}",
                                   _values(main[f"resnet{depth}"], "valid_accuracy"),
                                   f"plain{depth}", _values(main[f"plain{depth}"], "valid_accuracy")))
        findings.append(_gap_finding(depth, c))

    window = max(1, first.iters_per_epoch // 2)
    figures.curves(out / "train_loss.png", [
        (f"{family.capitalize()} networks", "training loss (per batch, smoothed)",
         {f"{prefix}{d}": [figures.smooth(r.batch_losses, window) for r in main[f"{prefix}{d}"]] for d in depths})
        for family, prefix in FAMILIES.items()
    ], xlabel="iteration", log_y=(True, True), sharey=True)
    figures.depth_lines(out / "depth.png", [
        ("final training loss (eval mode)",
         {f: {d: _values(main[f"{p}{d}"], "train_loss") for d in depths} for f, p in FAMILIES.items()}),
        ("final validation error",
         {f: {d: [1 - r.valid_accuracy for r in main[f"{p}{d}"]] for d in depths} for f, p in FAMILIES.items()}),
    ], title="Plain vs residual against depth, mean ± std over seeds")

    return Report(
        name=NAME, title=TITLE,
        question=("Do skip connections fix the degradation of deep plain networks? Each depth is trained twice: as a "
                  "plain stack of 3×3 convolutions with BatchNorm, and as the residual network with the same layers "
                  "plus shortcuts (identity, or 1×1 projection where the shape changes)."),
        setup=[data_line(s, first),
               f"Networks: CIFAR-style depth 6n+2 ({', '.join(map(str, depths))}), three stages of 16/32/64 filters.",
               f"Training: {training_line(s, epochs, lr)} The same settings for every network.",
               "He et al. trained 64k iterations on CIFAR-10; this is a few hundred on a small data set, so it tests "
               "how quickly each network can be optimised rather than its final accuracy."],
        tables=[table], comparisons=comparisons, findings=findings,
        plots=[("Training loss per batch (moving average over half an epoch)", "train_loss.png"),
               ("Final training loss and validation error against depth", "depth.png")],
        notes=["Seconds are wall-clock on a machine shared with other jobs: compare them within this report only."],
        summary=summary,
    )


def _depth_finding(prefix: str, hi: int, lo: int, c: Comparison) -> str:
    family = "plain" if prefix == "plain" else "residual"
    deep, shallow = f"{prefix}{hi}", f"{prefix}{lo}"
    if c.verdict == "cannot tell":
        return f"Depth, {family}: cannot tell whether {deep} trains worse than {shallow} ({c.detail})."
    if c.verdict == "does not show":
        return f"Depth, {family}: no training-loss difference between {deep} and {shallow} shows ({c.detail})."
    if c.diff > 0:
        what = "the degradation problem shows" if family == "plain" else "the residual networks degrade too here"
        return f"Depth, {family}: {deep} ends with a higher training loss than {shallow} — {what} ({c.detail})."
    return f"Depth, {family}: {deep} ends with a lower training loss than {shallow} ({c.detail})."


def _gap_finding(depth: int, c: Comparison) -> str:
    if c.verdict == "shows":
        better = f"resnet{depth}" if c.diff < 0 else f"plain{depth}"
        return f"Depth {depth}: {better} reaches the lower training loss ({c.detail})."
    if c.verdict == "cannot tell":
        return f"Depth {depth}: cannot tell plain from residual ({c.detail})."
    return f"Depth {depth}: no difference in training loss shows between plain and residual ({c.detail})."
