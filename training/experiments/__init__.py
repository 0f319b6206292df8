"""Small, rerunnable experiments behind the course's claims: ``python -m training experiment NAME --out DIR``.

- ``batchnorm``: the same ResNet with and without BatchNorm — accuracy/loss per epoch, time to a target accuracy,
  the largest learning rate that still trains;
- ``skip``: plain vs residual networks at depth 20/32/56 — the degradation problem (He et al. 2015);
- ``one-cycle``: fastai's one-cycle policy vs a constant learning rate vs a step schedule, same epoch budget;
- ``pooling``: global average vs global max pooling vs flatten in the head;
- ``transfer``: fine_tune's recipes (fastai's defaults, lr_mult 10 and 1, more frozen epochs) from a digits run
  vs training from scratch, on new classes with few images and on inverted digits labelled odd/even.

Each writes ``DIR/report.md`` (tables of mean ± std over seeds, and a verdict per comparison that says so when an
effect does not show on the data used), ``DIR/results.json`` (the same numbers and every run's raw measurements)
and PNG plots. Each module has ``NAME``, ``DEFAULTS`` (seeds, epochs, lr, …), ``plan(settings) -> [RunSpec]`` and
``analyse(settings, results, out) -> Report``; ``rewrite_report(DIR)`` redoes the report from results.json alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from training.experiments import batchnorm, one_cycle, pooling, report, skip, transfer
from training.experiments.runner import ExperimentError, RunResult, Settings, run_all

EXPERIMENTS: dict[str, ModuleType] = {
    batchnorm.NAME: batchnorm,
    skip.NAME: skip,
    one_cycle.NAME: one_cycle,
    pooling.NAME: pooling,
    transfer.NAME: transfer,
}

__all__ = ["EXPERIMENTS", "ExperimentError", "Settings", "rewrite_report", "run_experiment"]


def run_experiment(name: str, settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, train every run, analyse, and write the report; returns the content of results.json."""
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    settings.validate()
    module = EXPERIMENTS[name]
    settings = settings.with_defaults(module.DEFAULTS)
    specs = module.plan(settings)
    log(f"[{name}] {len(specs)} training runs → {settings.out}")
    t0 = time.perf_counter()
    results = run_all(name, specs, settings, log)
    settings.out.mkdir(parents=True, exist_ok=True)
    rep = module.analyse(settings, results, settings.out)
    doc = report.write(rep, settings, results, time.perf_counter() - t0)
    for line in rep.findings:
        log(f"[{name}] {line}")
    log(f"[{name}] report: {settings.out / 'report.md'}")
    return doc


def rewrite_report(out: str | Path) -> dict[str, Any]:
    """Redo the analysis, plots and report.md from the runs stored in ``out/results.json``, without training."""
    out = Path(out)
    try:
        doc = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise ExperimentError(f"cannot read {out / 'results.json'}: {e}") from None
    fields = dict(doc["settings"])
    fields.update(out=out, depths=tuple(fields["depths"]), lrs=tuple(fields["lrs"]))
    settings = Settings(**fields)
    results = [RunResult.from_json(r) for r in doc["runs"]]
    module = EXPERIMENTS[doc["experiment"]]
    rep = module.analyse(settings, results, out)
    return report.write(rep, settings, results, doc["seconds"], machine=doc["machine"])
