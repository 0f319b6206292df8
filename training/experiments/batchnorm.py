"""BatchNorm: the same ResNet with and without BatchNorm (Ioffe & Szegedy 2015).

Claims under test: BatchNorm makes training faster (fewer epochs and seconds to a target accuracy) and tolerates a
larger learning rate. Main runs train both variants at one peak learning rate; a sweep over learning rates, a
shorter budget each, finds the largest rate at which every seed still trains. The main runs also record what the
explanation needs (``bn_why``): activation and gradient scales layer by layer over the first iterations, and the
loss along the gradient direction during training.
"""

from __future__ import annotations

from pathlib import Path

from training.experiments import bn_why, figures
from training.experiments.report import Report, Table
from training.experiments.runner import (
    RunResult,
    RunSpec,
    Settings,
    by_variant,
    data_line,
    epochs_to_target,
    seconds_to_target,
    training_line,
    trains_threshold,
)
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "batchnorm"
TITLE = "BatchNorm: the same ResNet with and without BatchNorm"
# The main runs' default rate is one at which the network without BatchNorm can train too (resnet20 on digits: 3e-3,
# the rate lr_find picks for the BN network, left it at chance for some seeds), so that the time to the target
# compares speed rather than success; the sweep shows what happens at larger rates.
DEFAULTS = {"seeds": 3, "epochs": 5, "lr": 1e-3, "target": 0.95}
VARIANTS = {"BN": {}, "no BN": {"norm": False}}
# The main runs' inside view: per-layer statistics over the first iterations (about two epochs of digits at batch
# 64), the loss along the gradient every 10 iterations (each probe costs 8 forward/backward passes: at every 5th
# iteration the probes made a 14 s run take 85 s here).
TRACE_ITERATIONS = 40
LANDSCAPE_EVERY = 10


def plan(s: Settings) -> list[RunSpec]:
    epochs, lr = s.epochs, s.lr
    specs = [RunSpec(v, s.arch, seed, lr, epochs, model_kwargs=dict(kw), trace=TRACE_ITERATIONS,
                     landscape_every=LANDSCAPE_EVERY)
             for seed in range(s.seeds) for v, kw in VARIANTS.items()]
    specs += [RunSpec(v, s.arch, seed, rate, s.sweep_epochs, model_kwargs=dict(kw), group="sweep")
              for seed in range(s.seeds) for rate in sorted(s.lrs) for v, kw in VARIANTS.items()]
    return specs


def _trains(r: RunResult) -> bool:
    return not r.diverged and r.valid_accuracy >= trains_threshold(r.n_classes)


def largest_trainable_lr(runs: list[RunResult]) -> float | None:
    """The largest swept learning rate at which every seed trains."""
    by_lr: dict[float, list[RunResult]] = {}
    for r in runs:
        by_lr.setdefault(r.spec.lr, []).append(r)
    ok = [lr for lr, rs in by_lr.items() if all(_trains(r) for r in rs)]
    return max(ok) if ok else None


def _sweep_cell(runs: list[RunResult]) -> str:
    cell = fmt_values([r.valid_accuracy for r in runs])
    n_ok = sum(_trains(r) for r in runs)
    diverged = sum(r.diverged for r in runs)
    cell += f" ({n_ok}/{len(runs)} train" + (f", {diverged} diverged)" if diverged else ")")
    return cell


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    main, sweep = by_variant(results, "main"), by_variant(results, "sweep")
    target = s.target
    first = results[0]
    epochs, lr = first.spec.epochs, first.spec.lr
    threshold = trains_threshold(first.n_classes)
    pct = f"{target:.0%}"
    largest = {v: largest_trainable_lr(sweep.get(v, [])) for v in VARIANTS}

    rows, summary = [], {"target": target, "threshold": threshold, "variants": {}}
    for v, runs in main.items():
        cols = {
            "valid_accuracy": [r.valid_accuracy for r in runs],
            "valid_loss": [r.valid_loss for r in runs],
            "epochs_to_target": [epochs_to_target(r, target) for r in runs],
            "seconds_to_target": [seconds_to_target(r, target) for r in runs],
            "seconds_per_epoch": [r.train_seconds / r.spec.epochs for r in runs],
        }
        reached = sum(x is not None for x in cols["epochs_to_target"])
        summary["variants"][v] = {**{k: mean_std(x) for k, x in cols.items()}, "reached": reached,
                                  "largest_lr": largest[v]}
        rows.append([v, fmt_values(cols["valid_accuracy"]), fmt_values(cols["valid_loss"]),
                     fmt_values(cols["epochs_to_target"], 2), fmt_values(cols["seconds_to_target"], 1),
                     f"{reached}/{len(runs)}", fmt_values(cols["seconds_per_epoch"], 2),
                     f"{largest[v]:g}" if largest[v] is not None else "none swept"])
    main_table = Table(
        f"After {epochs} epochs at peak lr {lr:g} (one-cycle), mean ± std over {s.seeds} seed(s)",
        ["variant", "valid accuracy", "valid loss", f"epochs to {pct}", f"seconds to {pct}", "reached",
         "seconds / epoch", "largest lr that trains"], rows)
    sweep_rows = [[f"{rate:g}", *[_sweep_cell([r for r in sweep.get(v, []) if r.spec.lr == rate]) for v in VARIANTS]]
                  for rate in sorted(s.lrs)]
    sweep_table = Table(
        f"Learning-rate sweep: final valid accuracy after {s.sweep_epochs} epoch(s) (one-cycle); a run trains when "
        f"it reaches ≥ {threshold:.2f} (halfway from chance to 100 %)", ["peak lr", *VARIANTS], sweep_rows)

    a, b = main["BN"], main["no BN"]
    comparisons = [
        compare("final valid accuracy", "BN", [r.valid_accuracy for r in a], "no BN", [r.valid_accuracy for r in b]),
        compare("final valid loss", "BN", [r.valid_loss for r in a], "no BN", [r.valid_loss for r in b]),
        compare(f"epochs to {pct}", "BN", [epochs_to_target(r, target) for r in a],
                "no BN", [epochs_to_target(r, target) for r in b], digits=2),
        compare(f"seconds to {pct}", "BN", [seconds_to_target(r, target) for r in a],
                "no BN", [seconds_to_target(r, target) for r in b], digits=1),
    ]
    findings = [_speed_finding(summary["variants"], len(a), pct, comparisons[2]),
                _lr_finding(largest, sorted(s.lrs)),
                _accuracy_finding(comparisons[0])]
    inside, why_comparisons, why, why_plots, summary["inside"] = bn_why.analyse(main, out, largest)
    comparisons += why_comparisons

    figures.validation_curves(out / "curves.png", main, f"{first.spec.arch}, peak lr {lr:g}, mean ± std over seeds")
    window = max(1, first.iters_per_epoch // 2)
    figures.curves(out / "train_loss.png", [
        ("Training loss (per batch, smoothed)", "cross-entropy",
         {v: [figures.smooth(r.batch_losses, window) for r in rs] for v, rs in main.items()}),
    ], xlabel="iteration", log_y=(True,))
    figures.sweep(out / "sweep.png", {v: _by_lr(sweep.get(v, [])) for v in VARIANTS}, threshold,
                  title=f"Learning-rate sweep, {s.sweep_epochs} epoch(s) each")

    return Report(
        name=NAME, title=TITLE,
        question=("Does BatchNorm make a ResNet train faster and tolerate larger learning rates? The same network is "
                  "trained with BatchNorm and with every BatchNorm replaced by an identity (convolutions then get "
                  "a bias), same data, same schedule, same seeds."),
        setup=[data_line(s, first),
               f"Network: {first.spec.arch} (Kaiming-normal initialisation in both variants).",
               f"Main runs: {training_line(s, epochs, lr)}"
               + (" The default peak lr is low enough for the network without BN to train as well, so that the time "
                  "to the target compares speed, not success." if s.lr == DEFAULTS["lr"] else ""),
               f"Sweep: peak lr in {', '.join(f'{x:g}' for x in sorted(s.lrs))}, {s.sweep_epochs} epoch(s) each, "
               f"same seeds; the largest lr that trains is the largest at which every seed reaches {threshold:.2f}.",
               f"Target accuracy for the time-to-target columns: {pct} (time includes each epoch's validation)."],
        tables=[main_table, sweep_table, inside], comparisons=comparisons, findings=findings,
        plots=[("Validation accuracy and loss per epoch", "curves.png"),
               ("Training loss per batch (moving average over half an epoch)", "train_loss.png"),
               ("Final accuracy against the peak learning rate", "sweep.png"), *why_plots],
        notes=["Seconds are wall-clock on a machine shared with other jobs: compare them within this report only.",
               "A run that produces a non-finite loss is stopped at that batch and counted as diverged.",
               "The inside measurements run on the main runs only (peak lr " + f"{lr:g}" + "), from the weights each "
               "run actually visits; the landscape probes restore the weights and BN's running statistics, so they "
               "do not change the training. Their time is not counted in the seconds above."],
        summary=summary,
        sections=[("Why: what BatchNorm changes inside the network", why)],
    )


def _by_lr(runs: list[RunResult]) -> dict[float, list[float]]:
    out: dict[float, list[float]] = {}
    for r in runs:
        out.setdefault(r.spec.lr, []).append(r.valid_accuracy)
    return out


def _speed_finding(variants: dict, n: int, pct: str, comparison: Comparison) -> str:
    bn, plain = variants["BN"]["reached"], variants["no BN"]["reached"]
    if bn != plain:
        return (f"Speed: {pct} was reached by {bn}/{n} seed(s) with BN and {plain}/{n} without, within the same "
                "budget.")
    if bn == 0:
        return f"Speed: neither variant reached {pct}; lower --target or raise --epochs to compare speed."
    if comparison.verdict == "shows":
        faster = "BN" if comparison.diff < 0 else "no BN"
        return f"Speed: {faster} reaches {pct} in fewer epochs ({comparison.detail})."
    if comparison.verdict == "cannot tell":
        return f"Speed: cannot tell which reaches {pct} first ({comparison.detail})."
    return f"Speed: no difference in epochs to {pct} shows on this data ({comparison.detail})."


def _lr_finding(largest: dict[str, float | None], lrs: list[float]) -> str:
    def limit(lr: float | None) -> str:
        if lr is None:
            return "at no swept rate"
        above = [x for x in lrs if x > lr]
        return f"up to lr {lr:g}" + (f" (not at {above[0]:g})" if above else " (the largest swept)")

    bn, plain = largest["BN"], largest["no BN"]
    text = f"Learning rate (swept {lrs[0]:g} … {lrs[-1]:g}): BN trains {limit(bn)}, no BN {limit(plain)}"
    if bn is None or plain is None:
        return text + "."
    if bn == plain:
        return text + "; no difference shows."
    if bn > plain:
        return text + f": BN tolerates a {bn / plain:.3g}× larger learning rate."
    return text + f": without BN the tolerated rate is {plain / bn:.3g}× larger, the opposite of the claim."


def _accuracy_finding(comparison: Comparison) -> str:
    if comparison.verdict == "shows":
        better = "BN" if comparison.diff > 0 else "no BN"
        return f"Final accuracy: {better} ends higher after the same budget ({comparison.detail})."
    if comparison.verdict == "cannot tell":
        return f"Final accuracy: cannot tell ({comparison.detail})."
    return f"Final accuracy: no difference shows after the same budget ({comparison.detail})."
