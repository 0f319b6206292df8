"""Why BatchNorm helps, measured: what the BatchNorm experiment records inside its main runs, and what that says.

Three measurements (``probes``) on the same runs as the accuracy table:
- activations: the std and mean of the stem's and every residual block's output over the first iterations;
- gradients: the gradient norm of every convolution on the main path and of the classifier, same iterations;
- the loss along the gradient: L(w − η·g) and ∇L(w − η·g) for η from 1e-3 to 1, every few iterations (Santurkar
  et al. 2018). From each probe: the range of the loss over η ("variation"), the largest change of the gradient
  ("predictiveness"), effective β-smoothness max_η ‖∇L(w − ηg) − ∇L(w)‖ / (η‖g‖), and the largest η that still
  lowers the loss. Each run gives the value at iteration 0 and the median over its probes.

These quantities are scales: they span orders of magnitude between seeds and variants, so BN and no BN are
compared on log10 of each (a ratio of geometric means), and the explanation quotes each variant's range over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.experiments import figures
from training.experiments.report import Table
from training.experiments.runner import RunResult
from training.experiments.stats import Comparison, compare, finite, fmt_values, mean_std

__all__ = ["ROWS", "analyse", "landscape_metrics", "trace_metrics"]

VARIANTS = ("BN", "no BN")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _spread(values: list[float]) -> float | None:
    """Largest over smallest of the positive finite values."""
    xs = [x for x in finite(values) if x > 0]
    return max(xs) / min(xs) if xs else None


def trace_metrics(r: RunResult) -> dict[str, float | None]:
    """Activation scale through the depth and the spread of per-layer gradient norms, at iteration 0 and at the
    last traced iteration."""
    t = r.trace or {}
    std, grads = t.get("act_std") or [[]], t.get("grad_norm") or [[]]
    if not std[0] or not grads[0]:
        return {}
    relative = [g / w if g is not None and w else None for g, w in zip(grads[0], t["weight_norm"], strict=True)]
    return {"std_stem_0": std[0][0], "std_last_0": std[0][-1], "growth_0": _ratio(std[0][-1], std[0][0]),
            "growth_end": _ratio(std[-1][-1], std[-1][0]), "grad_fc_0": grads[0][-1],
            "grad_spread_0": _spread(grads[0]), "relative_spread_0": _spread(relative)}


def landscape_metrics(probe: dict[str, Any]) -> dict[str, float | None]:
    """One landscape probe in four numbers (see the module docstring)."""
    loss0, g = probe["loss"], probe["grad_norm"]
    losses = [x for x in (loss0, *probe["losses"]) if x is not None and math.isfinite(x)]
    steps = list(zip(probe["etas"], probe["losses"], probe["grad_change"], strict=True))
    betas = [c / (eta * g) for eta, _, c in steps if c is not None and math.isfinite(c) and g]
    lowering = [eta for eta, x, _ in steps if x is not None and loss0 is not None and x < loss0]
    changes = [c for _, _, c in steps if c is not None and math.isfinite(c)]
    return {"loss_range": max(losses) - min(losses) if losses else None,
            "grad_change": max(changes, default=None), "beta": max(betas, default=None),
            "lowering_eta": max(lowering, default=None), "grad_norm": g}


def _at_start(key: str) -> Callable[[RunResult], float | None]:
    return lambda r: landscape_metrics(r.landscape[0])[key] if r.landscape else None


def _median(key: str) -> Callable[[RunResult], float | None]:
    def metric(r: RunResult) -> float | None:
        values = [m[key] for m in map(landscape_metrics, r.landscape or []) if m[key] is not None]
        return statistics.median(values) if values else None

    return metric


def _traced(key: str) -> Callable[[RunResult], float | None]:
    return lambda r: trace_metrics(r).get(key)


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    metric: Callable[[RunResult], float | None]
    digits: int = 3
    compared: bool = False  # BN vs no BN on log10 of the value


ROWS: list[Row] = [
    Row("activation std after the stem, iteration 0", "std_stem_0", _traced("std_stem_0")),
    Row("activation std after the last block, iteration 0", "std_last_0", _traced("std_last_0")),
    Row("growth of the activation std, stem → last block, iteration 0 (×)", "growth_0", _traced("growth_0"), 2, True),
    Row("the same at the last traced iteration (×)", "growth_end", _traced("growth_end"), 2, True),
    Row("gradient norm of the classifier, iteration 0", "grad_fc_0", _traced("grad_fc_0")),
    Row("largest / smallest per-layer gradient norm, iteration 0 (×)", "grad_spread_0", _traced("grad_spread_0"), 1,
        True),
    Row("largest / smallest per-layer ‖∇W‖ / ‖W‖, iteration 0 (×)", "relative_spread_0",
        _traced("relative_spread_0"), 1, True),
    Row("‖g‖, whole network (median over probes)", "grad_norm", _median("grad_norm")),
    Row("range of L(w − ηg) over η, iteration 0", "loss_range_0", _at_start("loss_range"), 3, True),
    Row("range of L(w − ηg) over η (median over probes)", "loss_range", _median("loss_range"), 3, True),
    Row("effective β-smoothness, iteration 0", "beta_0", _at_start("beta"), 3, True),
    Row("effective β-smoothness (median over probes)", "beta", _median("beta"), 3, True),
    Row("largest η along −g that lowers the loss, iteration 0", "lowering_eta_0", _at_start("lowering_eta"), 3, True),
    Row("largest η along −g that lowers the loss (median over probes)", "lowering_eta", _median("lowering_eta"), 3,
        True),
]


def _log10(values: list[float | None]) -> list[float | None]:
    return [math.log10(x) if x is not None and math.isfinite(x) and x > 0 else None for x in values]


def analyse(main: dict[str, list[RunResult]], out: Path, largest_lr: dict[str, float | None],
            ) -> tuple[Table, list[Comparison], list[str], list[tuple[str, str]], dict[str, Any]]:
    """The table, the comparisons, the explanation's paragraphs, the plots and the summary numbers."""
    first = main["BN"][0]
    trace_len = len((first.trace or {}).get("act_std") or [])
    every = first.spec.landscape_every
    values = {row.key: {v: [row.metric(r) for r in main[v]] for v in VARIANTS} for row in ROWS}
    summary = {key: {v: mean_std(x) for v, x in by_variant.items()} for key, by_variant in values.items()}
    table = Table(
        f"Inside the network: the main runs' first {trace_len} iterations (activations, gradients) and the loss "
        f"along the gradient every {every} iterations; mean ± std over seeds",
        ["measured in the main runs", *VARIANTS],
        [[row.label, *(fmt_values(values[row.key][v], row.digits) for v in VARIANTS)] for row in ROWS])
    comparisons = {row.key: compare(f"log10 of {row.label}", "BN", _log10(values[row.key]["BN"]), "no BN",
                                    _log10(values[row.key]["no BN"]), digits=2) for row in ROWS if row.compared}
    paragraphs = _Why(values, comparisons, trace_len, every, len(first.trace["layers"]) - 1 if first.trace else 0,
                      largest_lr).paragraphs()
    return table, list(comparisons.values()), paragraphs, _plots(out, main, trace_len), summary


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


class _Why:
    """The explanation: every sentence quotes each variant's range over seeds and the log-scale verdict."""

    def __init__(self, values: dict[str, dict[str, list]], comparisons: dict[str, Comparison], trace_len: int,
                 every: int, blocks: int, largest_lr: dict[str, float | None]) -> None:
        self.values, self.c = values, comparisons
        self.trace_len, self.every, self.blocks, self.largest_lr = trace_len, every, blocks, largest_lr

    def span(self, key: str, variant: str) -> str:
        """min–max over seeds, or the one value."""
        xs = finite(self.values[key][variant])
        if not xs:
            return "—"
        lo, hi = min(xs), max(xs)
        return _num(lo) if f"{lo:.3g}" == f"{hi:.3g}" else f"{_num(lo)}–{_num(hi)}"

    def both(self, key: str, unit: str = "") -> str:
        return f"{unit}{self.span(key, 'BN')} with BN and {unit}{self.span(key, 'no BN')} without"

    def verdict(self, key: str) -> str:
        c = self.c[key]
        if c.verdict != "shows":
            return "no difference shows on a log scale" if c.verdict == "does not show" else "cannot tell"
        return f"a factor {10 ** abs(c.diff):.2g} {'larger' if c.diff > 0 else 'smaller'} with BN, beyond the spread"

    def lower_with_bn(self, key: str) -> bool:
        c = self.c[key]
        return c.verdict == "shows" and c.diff is not None and c.diff < 0

    def higher_with_bn(self, key: str) -> bool:
        c = self.c[key]
        return c.verdict == "shows" and c.diff is not None and c.diff > 0

    def paragraphs(self) -> list[str]:
        return [self.activations(), self.gradients(), self.landscape(), self.conclusion()]

    def activations(self) -> str:
        drift = ("Without BN nothing holds the scale: it is whatever the weights make it, and training moves it"
                 if self.lower_with_bn("growth_end") else
                 "On these runs BN does not keep the scale measurably flatter through the depth")
        return (f"**Activations.** Over seeds, the std of the stem's output at initialisation is "
                f"{self.both('std_stem_0')}; after the last of the {self.blocks} residual blocks "
                f"{self.both('std_last_0')}. From the stem to the last block the scale grows "
                f"{self.both('growth_0', '×')} at iteration 0 ({self.verdict('growth_0')}), and "
                f"{self.both('growth_end', '×')} after {self.trace_len} iterations "
                f"({self.verdict('growth_end')}). {drift}; with BN every block's branch is renormalised, so only "
                "its learned γ and β set the scale (activations.png).")

    def gradients(self) -> str:
        evens = self.lower_with_bn("grad_spread_0") and self.lower_with_bn("relative_spread_0")
        uneven = self.higher_with_bn("grad_spread_0") or self.higher_with_bn("relative_spread_0")
        lead = ("BN evens out the gradient across layers here" if evens else
                "BN does not even out the gradient across layers here; it spreads it more" if uneven else
                "Per-layer gradients are not measurably more even with BN here")
        return (f"**Gradients.** {lead}: at iteration 0 the largest over the smallest per-layer gradient norm is "
                f"{self.both('grad_spread_0', '×')} ({self.verdict('grad_spread_0')}), and of the relative gradient "
                f"‖∇W‖/‖W‖ {self.both('relative_spread_0', '×')} ({self.verdict('relative_spread_0')}). Training uses "
                "Adam, which divides each parameter's step by its own running gradient scale, so these spreads reach "
                "the weights less directly than they would with SGD (gradients.png).")

    def landscape(self) -> str:
        return (f"**The loss along the gradient.** Every {self.every} iterations, from the weights the run had "
                "reached, plain gradient steps w − ηg with η from 1e-3 to 1 (landscape.png). At initialisation: "
                f"the loss ranges over {self.both('loss_range_0')} ({self.verdict('loss_range_0')}), effective "
                f"β-smoothness {self.both('beta_0')} ({self.verdict('beta_0')}), the longest step that still lowers "
                f"the loss η = {self.both('lowering_eta_0')}. Along the whole run (median over probes): range "
                f"{self.both('loss_range')} ({self.verdict('loss_range')}), β-smoothness {self.both('beta')} "
                f"({self.verdict('beta')}), longest lowering step η = {self.both('lowering_eta')} "
                f"({self.verdict('lowering_eta')}).")

    def conclusion(self) -> str:
        lr = {v: "none of the swept rates" if x is None else f"{x:g}" for v, x in self.largest_lr.items()}
        sweep = f"the sweep's largest learning rate that trains is {lr.get('BN')} with BN and {lr.get('no BN')} without"
        smoother, longer = self.lower_with_bn("beta"), self.higher_with_bn("lowering_eta")
        from_start = self.lower_with_bn("beta_0")
        when = ("already at initialisation" if from_start else
                "not at initialisation, where the two are alike, but along the trajectory training takes")
        if smoother and longer:
            return ("**What this supports.** With BN the gradient stays a reliable guide over longer steps — it "
                    "changes less per unit of step (lower effective β-smoothness) and a longer step along it still "
                    f"lowers the loss — {when}. That is the smoothing explanation of Santurkar et al. 2018, and it is "
                    f"consistent with the sweep: {sweep}. These numbers do not test the original explanation "
                    "(internal covariate shift), and they come from one small network on one small data set.")
        if smoother or longer:
            which = "the gradient changes less per unit of step" if smoother else "longer steps still lower the loss"
            return (f"**What this supports.** In part: with BN {which}, but the other smoothness measure does not "
                    f"separate the two networks, so the smoothing explanation is only half supported here; {sweep}.")
        return ("**What this supports.** On these runs the smoothness measures do not separate the two networks, so "
                f"they do not support the smoothing explanation here; {sweep}.")


def _plots(out: Path, main: dict[str, list[RunResult]], trace_len: int) -> list[tuple[str, str]]:
    traced = {v: [r for r in runs if r.trace and r.trace["act_std"]] for v, runs in main.items()}
    last = max(trace_len - 1, 0)
    depth = {f"{v}, it. {t}": (range(len(runs[0].trace["layers"])), [r.trace["act_std"][t] for r in runs])
             for v, runs in traced.items() if runs for t in sorted({0, last})}
    over_time = {v: (range(trace_len), [[row[-1] for row in r.trace["act_std"]] for r in runs])
                 for v, runs in traced.items() if runs}
    figures.lines(out / "activations.png", [
        ("Activation std through the depth", "0 = stem, then each residual block", "std", depth),
        ("Activation std after the last block", "iteration", "std", over_time),
    ], log_y=(True, True), geometric=True)
    grads = {v: (range(len(runs[0].trace["weights"])), [r.trace["grad_norm"][0] for r in runs])
             for v, runs in traced.items() if runs}

    def norm(row: list[float | None]) -> float:
        return math.sqrt(sum(x * x for x in row if x is not None))

    total = {v: (range(trace_len), [[norm(row) for row in r.trace["grad_norm"]] for r in runs])
             for v, runs in traced.items() if runs}
    figures.lines(out / "gradients.png", [
        ("Gradient norm per layer, iteration 0", "weight layer (convolutions, then the classifier)", "‖∂L/∂W‖", grads),
        ("Gradient norm, all weight layers", "iteration", "‖g‖", total),
    ], log_y=(True, True), geometric=True)
    probed = {v: [r for r in runs if r.landscape] for v, runs in main.items()}
    start = {v: (runs[0].landscape[0]["etas"], [[x / r.landscape[0]["loss"] if x is not None else math.nan
                                                 for x in r.landscape[0]["losses"]] for r in runs])
             for v, runs in probed.items() if runs}

    def along(key: str) -> dict[str, tuple[list[int], list[list[float]]]]:
        def value(probe: dict[str, Any]) -> float:
            x = landscape_metrics(probe)[key]
            return math.nan if x is None else x

        return {v: ([p["iteration"] for p in runs[0].landscape], [[value(p) for p in r.landscape] for r in runs])
                for v, runs in probed.items() if runs}

    figures.lines(out / "landscape.png", [
        ("Loss along −g, iteration 0", "step η", "L(w − ηg) / L(w)", start),
        ("Range of L(w − ηg) over η", "iteration", "loss range", along("loss_range")),
        ("Effective β-smoothness", "iteration", "max ‖Δ∇L‖ / ‖ηg‖", along("beta")),
    ], log_x=(True, False, False), log_y=(True, True, True), geometric=True)
    spread = "; geometric mean and ×/÷ geometric std over seeds"
    return [("Activation scale through the depth (iteration 0 and the last traced) and over the first iterations"
             + spread, "activations.png"),
            ("Per-layer gradient norms at iteration 0, and the whole gradient's norm over the first iterations"
             + spread, "gradients.png"),
            ("The loss along the gradient direction: at iteration 0, and its variation and β-smoothness during "
             "training" + spread, "landscape.png")]
