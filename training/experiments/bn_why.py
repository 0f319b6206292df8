"""Why BatchNorm helps, measured: what the BatchNorm experiment records inside its main runs, and what that says.

Three measurements (``probes``) on the same runs as the accuracy table:
- activations: the std and mean of the stem's and every residual block's output over the first iterations;
- gradients: the gradient norm of every convolution on the main path and of the classifier, same iterations;
- the loss along the gradient: L(w − η·g) and ∇L(w − η·g) for η from 1e-3 to 1, every few iterations (Santurkar
  et al. 2018). From each probe: the range of the loss over η ("variation"), the largest change of the gradient
  ("predictiveness"), effective β-smoothness max_η ‖∇L(w − ηg) − ∇L(w)‖ / (η‖g‖), and the largest η that still
  lowers the loss. Each run is summarised by the median over its probes, each variant by mean ± std over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.experiments import figures
from training.experiments.report import Table
from training.experiments.runner import RunResult
from training.experiments.stats import Comparison, compare, fmt_values, mean_std

__all__ = ["analyse", "landscape_metrics", "trace_metrics"]

Metric = Callable[[RunResult], float | None]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def trace_metrics(r: RunResult) -> dict[str, float | None]:
    """Activation scale through the depth and the spread of per-layer gradient norms, at iteration 0 and at the
    last traced iteration."""
    t = r.trace or {}
    std, grads = t.get("act_std") or [[]], t.get("grad_norm") or [[]]
    if not std[0] or not grads[0]:
        return {}
    finite = [g for g in grads[0] if g is not None and math.isfinite(g) and g > 0]
    return {"std_stem_0": std[0][0], "std_last_0": std[0][-1], "growth_0": _ratio(std[0][-1], std[0][0]),
            "growth_end": _ratio(std[-1][-1], std[-1][0]), "grad_first_0": grads[0][0], "grad_fc_0": grads[0][-1],
            "grad_spread_0": _ratio(max(finite, default=None), min(finite, default=None))}


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


def _median_over_probes(r: RunResult, key: str) -> float | None:
    values = [m[key] for m in map(landscape_metrics, r.landscape or []) if m[key] is not None]
    return statistics.median(values) if values else None


# (row label, metric of one run, digits): the table's rows, in order.
ROWS: list[tuple[str, str, Metric, int]] = [
    ("activation std after the stem, iteration 0", "std_stem_0", lambda r: trace_metrics(r).get("std_stem_0"), 3),
    ("activation std after the last block, iteration 0", "std_last_0",
     lambda r: trace_metrics(r).get("std_last_0"), 3),
    ("growth of the activation std, stem → last block, iteration 0 (×)", "growth_0",
     lambda r: trace_metrics(r).get("growth_0"), 2),
    ("the same at the last traced iteration (×)", "growth_end", lambda r: trace_metrics(r).get("growth_end"), 2),
    ("gradient norm, first convolution, iteration 0", "grad_first_0", lambda r: trace_metrics(r).get("grad_first_0"),
     3),
    ("gradient norm, classifier, iteration 0", "grad_fc_0", lambda r: trace_metrics(r).get("grad_fc_0"), 3),
    ("largest / smallest per-layer gradient norm, iteration 0 (×)", "grad_spread_0",
     lambda r: trace_metrics(r).get("grad_spread_0"), 1),
    ("‖g‖, whole network (median over probes)", "grad_norm", lambda r: _median_over_probes(r, "grad_norm"), 3),
    ("range of L(w − ηg) over η (median over probes)", "loss_range", lambda r: _median_over_probes(r, "loss_range"), 3),
    ("largest ‖∇L(w − ηg) − g‖ (median over probes)", "grad_change", lambda r: _median_over_probes(r, "grad_change"),
     3),
    ("effective β-smoothness (median over probes)", "beta", lambda r: _median_over_probes(r, "beta"), 2),
    ("largest η along −g that lowers the loss (median over probes)", "lowering_eta",
     lambda r: _median_over_probes(r, "lowering_eta"), 3),
]
COMPARED = ("growth_0", "grad_spread_0", "loss_range", "beta", "lowering_eta")


def analyse(main: dict[str, list[RunResult]], out: Path, largest_lr: dict[str, float | None],
            ) -> tuple[Table, list[Comparison], list[str], list[tuple[str, str]], dict[str, Any]]:
    """The table, the comparisons, the explanation's paragraphs, the plots and the summary numbers."""
    bn, plain = main["BN"], main["no BN"]
    first = bn[0]
    trace_len = len((first.trace or {}).get("act_std") or [])
    every = first.spec.landscape_every
    values = {key: {v: [metric(r) for r in runs] for v, runs in main.items()} for _, key, metric, _ in ROWS}
    summary = {key: {v: mean_std(x) for v, x in by_variant.items()} for key, by_variant in values.items()}
    table = Table(
        f"Inside the network: the main runs' first {trace_len} iterations (activations, gradients) and the loss "
        f"along the gradient every {every} iterations; mean ± std over seeds",
        ["measured in the main runs", *main], [[label, *(fmt_values(values[key][v], digits) for v in main)]
                                               for label, key, _, digits in ROWS])
    comparisons = [compare(label, "BN", values[key]["BN"], "no BN", values[key]["no BN"], digits=digits)
                   for label, key, _, digits in ROWS if key in COMPARED]
    plots = _plots(out, main, trace_len)
    paragraphs = _why(summary, {c.metric: c for c in comparisons}, len(bn), len(plain), trace_len, every, largest_lr,
                      len(first.trace["layers"]) - 1 if first.trace else 0)
    return table, comparisons, paragraphs, plots, summary


def _mean(summary: dict[str, Any], key: str, variant: str) -> float | None:
    return summary[key][variant][0]


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _verdict(c: Comparison) -> str:
    return {"shows": "the difference shows", "does not show": "no difference shows",
            "cannot tell": "cannot tell"}[c.verdict] + f": {c.detail}"


def _why(summary: dict[str, Any], c: dict[str, Comparison], n_bn: int, n_plain: int, trace_len: int, every: int,
         largest_lr: dict[str, float | None], blocks: int) -> list[str]:
    """The explanation, each sentence carrying the numbers it rests on."""
    def m(key: str, v: str, digits: int = 3) -> str:
        return _num(_mean(summary, key, v), digits)

    labels = {key: label for label, key, _, _ in ROWS}
    scale = (f"**Activations.** At initialisation (iteration 0; mean over {n_bn} and {n_plain} seeds) the stem's "
             f"output has std {m('std_stem_0', 'BN')} with BN and {m('std_stem_0', 'no BN')} without; after the "
             f"last of the {blocks} residual blocks, {m('std_last_0', 'BN')} with BN and {m('std_last_0', 'no BN')} "
             "without. "
             f"Through the blocks the scale grows {m('growth_0', 'BN')}× with BN and {m('growth_0', 'no BN')}× "
             f"without ({_verdict(c[labels['growth_0']])}); after {trace_len} iterations "
             f"{m('growth_end', 'BN')}× and {m('growth_end', 'no BN')}×. Each residual sum x + F(x) adds the "
             "branch's variance to the shortcut's; BN resets every branch to a learned scale, without it nothing "
             "brings the scale back.")
    grads = (f"**Gradients.** At iteration 0 the per-layer gradient norms span a factor {m('grad_spread_0', 'BN')} "
             f"(largest / smallest layer) with BN and {m('grad_spread_0', 'no BN')} without "
             f"({_verdict(c[labels['grad_spread_0']])}); the classifier's gradient norm is {m('grad_fc_0', 'BN')} "
             f"with BN and {m('grad_fc_0', 'no BN')} without. Training uses Adam, which divides each parameter's step "
             "by its own running gradient scale, so these differences reach the weights less directly than they "
             "would with SGD.")
    beta, lowering, spread = c[labels["beta"]], c[labels["lowering_eta"]], c[labels["loss_range"]]
    land = (f"**The loss along the gradient.** Every {every} iterations, from the weights the run had reached, plain "
            f"gradient steps w − ηg with η from 1e-3 to 1: the loss varies over a range of {m('loss_range', 'BN')} "
            f"with BN and {m('loss_range', 'no BN')} without ({_verdict(spread)}); effective β-smoothness "
            f"{m('beta', 'BN')} vs {m('beta', 'no BN')} ({_verdict(beta)}); the largest step that still lowers the "
            f"loss is η = {m('lowering_eta', 'BN')} with BN and {m('lowering_eta', 'no BN')} without "
            f"({_verdict(lowering)}).")
    return [scale, grads, land, _conclusion(beta, lowering, largest_lr)]


def _conclusion(beta: Comparison, lowering: Comparison, largest_lr: dict[str, float | None]) -> str:
    def lr(v: str) -> str:
        x = largest_lr.get(v)
        return "none of the swept rates" if x is None else f"{x:g}"

    sweep = f"the sweep's largest learning rate that trains is {lr('BN')} with BN and {lr('no BN')} without"
    smoother = beta.verdict == "shows" and beta.diff is not None and beta.diff < 0
    longer = lowering.verdict == "shows" and lowering.diff is not None and lowering.diff > 0
    if smoother and longer:
        return ("**What this supports.** With BN the gradient stays a reliable guide over longer steps: it changes "
                "less per unit of step (smaller effective β-smoothness) and a longer step along it still lowers the "
                f"loss. That is the smoothing explanation of Santurkar et al. 2018, and it matches the sweep: {sweep}. "
                "These numbers do not test the original explanation, internal covariate shift, and they come from "
                "one small network on one small data set.")
    if smoother or longer:
        which = "the gradient changes less per unit of step" if smoother else "longer steps still lower the loss"
        return (f"**What this supports.** Partly: with BN {which}, but the other smoothness measure does not show "
                f"a difference here, so the smoothing explanation is only half supported by these runs; {sweep}.")
    return ("**What this supports.** On these runs the smoothness measures do not separate the two networks, so "
            f"they do not support the smoothing explanation here, whatever the accuracy does; {sweep}.")


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
    ], log_y=(True, True))
    grads = {v: (range(len(runs[0].trace["weights"])), [r.trace["grad_norm"][0] for r in runs])
             for v, runs in traced.items() if runs}
    def norm(row: list[float | None]) -> float:
        return math.sqrt(sum(x * x for x in row if x is not None))

    total = {v: (range(trace_len), [[norm(row) for row in r.trace["grad_norm"]] for r in runs])
             for v, runs in traced.items() if runs}
    figures.lines(out / "gradients.png", [
        ("Gradient norm per layer, iteration 0", "weight layer (convolutions, then the classifier)", "‖∂L/∂W‖", grads),
        ("Gradient norm, all weight layers", "iteration", "‖g‖", total),
    ], log_y=(True, True))
    probed = {v: [r for r in runs if r.landscape] for v, runs in main.items()}
    first = {v: (runs[0].landscape[0]["etas"], [[x / r.landscape[0]["loss"] if x is not None else math.nan
                                                 for x in r.landscape[0]["losses"]] for r in runs])
             for v, runs in probed.items() if runs}

    def along(key: str) -> dict[str, tuple[list[int], list[list[float]]]]:
        def value(probe: dict[str, Any]) -> float:
            x = landscape_metrics(probe)[key]
            return math.nan if x is None else x

        return {v: ([p["iteration"] for p in runs[0].landscape], [[value(p) for p in r.landscape] for r in runs])
                for v, runs in probed.items() if runs}

    figures.lines(out / "landscape.png", [
        ("Loss along −g, iteration 0", "step η", "L(w − ηg) / L(w)", first),
        ("Range of L(w − ηg) over η", "iteration", "loss range", along("loss_range")),
        ("Effective β-smoothness", "iteration", "max ‖Δ∇L‖ / ‖ηg‖", along("beta")),
    ], log_x=(True, False, False), log_y=(True, True, True))
    return [("Activation scale through the depth (iteration 0 and the last traced) and over the first iterations",
             "activations.png"),
            ("Per-layer gradient norms at iteration 0, and the whole gradient's norm over the first iterations",
             "gradients.png"),
            ("The loss along the gradient direction: at iteration 0, and its variation and β-smoothness during "
             "training", "landscape.png")]
