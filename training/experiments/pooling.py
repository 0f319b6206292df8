"""The head: global average pooling vs global max pooling vs flatten (Lin et al. 2013, "Network in Network").

Claims under test: global average pooling needs far fewer parameters than flattening the last feature map into the
classifier and, being blind to *where* a feature fired, is more robust to a shift of the input; max pooling keeps
only the strongest response per channel. Besides the validation accuracy, each model is scored on the validation
images shifted by a few pixels (up, down, left and right; the edge pixels fill the uncovered border).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models import registry
from training.experiments import figures
from training.experiments.report import Report, Table
from training.experiments.runner import (
    ExperimentError,
    RunResult,
    RunSpec,
    Settings,
    by_variant,
    data_line,
    training_line,
)
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

NAME = "pooling"
TITLE = "Pooling in the head: global average vs global max vs flatten"
DEFAULTS = {"seeds": 5, "epochs": 5, "lr": 3e-3}


def input_size(s: Settings) -> int:
    from training.settings import FitConfig, default_size

    size = s.size or default_size(FitConfig(data=s.data, arch=s.arch, epochs=1, out=s.out))
    minimum = registry.downsampling(s.arch)
    if size < minimum:
        raise ExperimentError(f"--size {size} is too small for {s.arch}, which downsamples by {minimum}: "
                              f"use --size >= {minimum}")
    return size


def feature_side(arch: str, size: int) -> int:
    """Side of the last feature map for a ``size``×``size`` input: the grid that "flatten" keeps."""
    model = registry.create(arch, num_classes=2, in_chans=1).eval()
    with torch.no_grad():
        return int(model.forward_features(torch.zeros(1, 1, size, size)).shape[-1])


def variants(s: Settings) -> dict[str, dict]:
    side = feature_side(s.arch, input_size(s))
    return {"global avg": {}, "global max": {"pool": "max"}, f"flatten {side}×{side}": {"pool_size": side}}


def shift_pixels(size: int) -> int:
    return max(1, size // 8)


def plan(s: Settings) -> list[RunSpec]:
    epochs, lr = s.epochs, s.lr
    shift = shift_pixels(input_size(s))
    return [RunSpec(name, s.arch, seed, lr, epochs, model_kwargs=dict(kw), shift=shift)
            for seed in range(s.seeds) for name, kw in variants(s).items()]


def fc_parameters(arch: str, n_classes: int, model_kwargs: dict) -> int:
    fc = registry.create(arch, num_classes=n_classes, in_chans=1, **model_kwargs).fc
    return sum(p.numel() for p in fc.parameters())


def analyse(s: Settings, results: list[RunResult], out: Path) -> Report:
    main = by_variant(results)
    first = results[0]
    epochs, lr, shift = first.spec.epochs, first.spec.lr, first.spec.shift
    names = list(main)
    avg, mx, flat = names

    def values(name: str, key: str) -> list[float | None]:
        return [getattr(r, key) for r in main[name]]

    def drop(name: str) -> list[float | None]:
        return [None if r.shifted_accuracy is None else r.valid_accuracy - r.shifted_accuracy for r in main[name]]

    rows, summary = [], {"shift": shift, "variants": {}}
    for name, runs in main.items():
        n_fc = fc_parameters(first.spec.arch, first.n_classes, runs[0].spec.model_kwargs)
        cols = {"valid_accuracy": values(name, "valid_accuracy"), "valid_loss": values(name, "valid_loss"),
                "shifted_accuracy": values(name, "shifted_accuracy"), "shift_drop": drop(name)}
        summary["variants"][name] = {**{k: mean_std(v) for k, v in cols.items()}, "fc_parameters": n_fc}
        rows.append([name, f"{n_fc:,}", fmt_values(cols["valid_accuracy"]), fmt_values(cols["valid_loss"]),
                     fmt_values(cols["shifted_accuracy"]), fmt_values(cols["shift_drop"])])
    table = Table(f"After {epochs} epochs at peak lr {lr:g} (one-cycle), mean ± std over {s.seeds} seed(s)",
                  ["head", "fc parameters", "valid accuracy", "valid loss", f"accuracy shifted {shift} px",
                   "drop under shift"], rows)

    comparisons = [
        compare("final valid accuracy", avg, values(avg, "valid_accuracy"), mx, values(mx, "valid_accuracy")),
        compare("final valid accuracy", avg, values(avg, "valid_accuracy"), flat, values(flat, "valid_accuracy")),
        compare(f"accuracy drop under a {shift}-px shift", avg, drop(avg), mx, drop(mx)),
        compare(f"accuracy drop under a {shift}-px shift", avg, drop(avg), flat, drop(flat)),
    ]
    findings = [_finding(f"{avg} vs {mx}", comparisons[0], comparisons[2]),
                _finding(f"{avg} vs {flat}", comparisons[1], comparisons[3])]

    figures.validation_curves(out / "curves.png", main, f"{first.spec.arch}, peak lr {lr:g}, mean ± std over seeds")
    figures.bars(out / "shift.png", [
        ("valid accuracy", {n: values(n, "valid_accuracy") for n in names}),
        (f"accuracy, input shifted {shift} px", {n: values(n, "shifted_accuracy") for n in names}),
    ], title="Accuracy on the validation images, as is and shifted")

    return Report(
        name=NAME, title=TITLE,
        question=("What does the pooling in the head change? The same network is trained with three heads: global "
                  "average pooling (the ResNet default), global max pooling, and no global pooling at all — the "
                  "last feature map flattened into the classifier."),
        setup=[data_line(s, first),
               f"Network: {first.spec.arch}; only the head differs. {training_line(s, epochs, lr)}",
               f"Shift test: the validation images moved by {shift} px up, down, left and right (edge pixels repeated "
               "into the border); the accuracy is averaged over the four shifts."],
        tables=[table], comparisons=comparisons, findings=findings,
        plots=[("Validation accuracy and loss per epoch", "curves.png"),
               ("Accuracy as is and under a shift of the input", "shift.png")],
        notes=["A lower 'drop under shift' means more robust to the shift; the comparisons test the drop, not "
               "the raw shifted accuracy, so that a better-trained head does not look more robust for that reason."],
        summary=summary,
    )


def _finding(pair: str, acc: Comparison, shift_drop: Comparison) -> str:
    parts = []
    if acc.verdict == "shows":
        parts.append(f"{acc.a if acc.diff > 0 else acc.b} is more accurate ({acc.detail})")
    else:
        parts.append(f"{'cannot tell the' if acc.verdict == 'cannot tell' else 'no'} accuracy difference "
                     f"({acc.detail})")
    if shift_drop.verdict == "shows":
        parts.append(f"{shift_drop.a if shift_drop.diff < 0 else shift_drop.b} loses less accuracy under the shift "
                     f"({shift_drop.detail})")
    else:
        parts.append(f"{'cannot tell the' if shift_drop.verdict == 'cannot tell' else 'no'} difference in "
                     f"robustness to the shift ({shift_drop.detail})")
    return f"{pair}: " + "; ".join(parts) + "."
