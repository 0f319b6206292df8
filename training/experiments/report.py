"""The experiment's report: ``DIR/report.md`` (tables, findings, plots) and ``DIR/results.json`` (the same tables,
every comparison, and every run's raw numbers), written from one ``Report`` so the two cannot disagree."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.experiments.runner import RunResult, Settings, json_safe
from training.experiments.stats import Comparison


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"**{self.caption}**", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Report:
    name: str
    title: str
    question: str                       # the claim under test, one paragraph
    setup: list[str]                    # what was trained, one bullet each
    tables: list[Table] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)      # conclusions in words, drawn from the comparisons
    plots: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name in DIR)
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # the tables' numbers, unformatted
    # Further sections after the findings: (heading, paragraphs), e.g. the explanation the measurements support.
    sections: list[tuple[str, list[str]]] = field(default_factory=list)


def describe_this_machine() -> dict[str, Any]:
    """What the timings depend on: CPU, core count, library versions, threads, load."""
    import fastai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"os": platform.platform(terse=True), "cpu": cpu, "logical_cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def describe_machine(m: dict[str, Any]) -> str:
    threads = f"{m['torch_threads']} thread" + ("s" if m["torch_threads"] != 1 else "")
    return (f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['os']}; Python {m['python']}, torch {m['torch']} "
            f"({threads}), fastai {m['fastai']}; 1/5/15-min load average at the end "
            f"{', '.join(map(str, m['load_average']))}")


def markdown(report: Report, settings: Settings, mach: dict[str, Any], seconds: float, n_runs: int) -> str:
    parts = [f"# {report.title}", "", report.question, "",
             f"**Command:** `{settings.command}`  ",
             f"**Machine:** {describe_machine(mach)}  ",
             f"**Wall time:** {seconds / 60:.1f} min for {n_runs} training runs", "",
             "## Setup", ""]
    parts += [f"- {line}" for line in report.setup]
    parts += ["- Every run is a `python -m training fit` run: fixed peak lr (no lr_find), plain cross-entropy (no "
              "label smoothing), no data augmentation; the seed fixes the initialisation and the batch order. "
              f"Torch threads per run: {mach['torch_threads']}."]
    parts += ["", "## Results", ""]
    for table in report.tables:
        parts += [table.markdown(), ""]
    parts += ["## What the numbers say", ""]
    parts += [f"- {line}" for line in report.findings]
    parts += ["", "Each comparison (difference of means, with its 95 % confidence interval over seeds):", ""]
    parts += [f"- {c.text}" for c in report.comparisons]
    for heading, paragraphs in report.sections:
        parts += ["", f"## {heading}"]
        for paragraph in paragraphs:
            parts += ["", paragraph]
    parts += ["", "## Plots", ""]
    for caption, name in report.plots:
        parts += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    if report.notes:
        parts += ["## Notes", ""]
        parts += [f"- {line}" for line in report.notes]
        parts += [""]
    return "\n".join(parts).rstrip() + "\n"


def write(report: Report, settings: Settings, results: list[RunResult], seconds: float,
          machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.md and results.json into settings.out; returns the results.json content. ``machine``: the
    description recorded with the runs (default: this machine, now)."""
    mach = machine or {**describe_this_machine(), "torch_threads": settings.threads}
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": report.name,
        "title": report.title,
        "command": settings.command,
        "machine": mach,
        "seconds": round(seconds, 1),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "tables": [{"caption": t.caption, "headers": t.headers, "rows": t.rows} for t in report.tables],
        "summary": report.summary,
        "comparisons": [c.to_json() for c in report.comparisons],
        "findings": report.findings,
        "sections": [{"heading": h, "paragraphs": p} for h, p in report.sections],
        "plots": [name for _, name in report.plots],
        "runs": [r.to_json() for r in results],
    }
    doc = json_safe(doc)
    (out / "report.md").write_text(markdown(report, settings, mach, seconds, len(results)))
    (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return doc
