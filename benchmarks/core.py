"""What every benchmark family shares: statistics of repeats, result rows, interleaved timing.

A :class:`Row` compares a *candidate* with its *baseline*, both measured in this run. ``ratio`` is oriented so
that it reads as "how many times the baseline's speed the candidate reaches" (> 1: the candidate is faster):
baseline time ÷ candidate time for durations, candidate rate ÷ baseline rate for throughputs. Rows whose
comparison is not a speed (memory, accuracy) say what their ratio means in ``ratio_label``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.targets import TARGETS


@dataclass(frozen=True)
class Stat:
    """A measured quantity over its repeats."""

    median: float
    min: float
    max: float
    n: int
    unit: str

    @classmethod
    def of(cls, values: Sequence[float], unit: str) -> Stat:
        values = [float(v) for v in values]
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values), unit)

    @classmethod
    def one(cls, value: float, unit: str) -> Stat:
        return cls(float(value), float(value), float(value), 1, unit)

    def scaled(self, factor: float, unit: str) -> Stat:
        """The same repeats in another unit (``factor`` > 0), e.g. seconds → milliseconds."""
        return Stat(self.median * factor, self.min * factor, self.max * factor, self.n, unit)

    def rate(self, items: float, unit: str) -> Stat:
        """``items`` ÷ these durations (seconds) as a rate; the slowest repeat becomes the minimum."""
        return Stat(items / self.median, items / self.max, items / self.min, self.n, unit)

    def text(self, digits: int = 3) -> str:
        spread = f" [{_num(self.min, digits)}–{_num(self.max, digits)}]" if self.n > 1 else ""
        return f"{_num(self.median, digits)}{spread} {self.unit}"


def _num(x: float, digits: int) -> str:
    if not math.isfinite(x):
        return str(x)
    if x != 0 and abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


@dataclass
class Row:
    """One line of the table: candidate vs baseline, both measured in this run."""

    family: str
    name: str
    baseline: str
    baseline_stat: Stat | None
    candidate: str
    candidate_stat: Stat | None
    ratio: float | None
    ratio_label: str = "speed ratio (candidate / baseline; > 1: candidate faster)"
    target: str | None = None          # a key of benchmarks.targets.TARGETS
    met: bool | None = None            # None: no target, or not measurable in this run
    verdict: str = ""                  # how the target was judged, e.g. "1.93x < 2x"
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["target_text"] = TARGETS.get(self.target or "")
        return doc


def speed_ratio(baseline: Stat, candidate: Stat) -> float:
    """Candidate speed ÷ baseline speed, from two times (s, ms) or two rates (…/s) in the same unit."""
    if baseline.unit != candidate.unit:
        raise ValueError(f"cannot compare {baseline.unit} with {candidate.unit}")
    if candidate.unit.endswith("/s"):
        return candidate.median / baseline.median
    return baseline.median / candidate.median


def judge(ratio: float | None, threshold: float) -> tuple[bool | None, str]:
    """Met when ``ratio >= threshold``; the verdict says by how much."""
    if ratio is None or not math.isfinite(ratio):
        return None, "not measured"
    return ratio >= threshold, f"{ratio:.2f}x {'>=' if ratio >= threshold else '<'} {threshold:g}x"


@dataclass
class Context:
    """One benchmark run: its settings, a work folder for generated models and data, and its log."""

    work: Path
    quick: bool
    threads: int
    root: Path                          # the project checkout (for runs/digits and model_repository)
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    assets: dict[str, Any] = field(default_factory=dict)   # shared, built on first use (see benchmarks.assets)

    def note(self, text: str) -> None:
        """A sentence for the report (what was reused, what could not be measured)."""
        self.notes.append(text)
        self.log(f"note: {text}")

    def repeats(self, full: int, quick: int = 2) -> int:
        return quick if self.quick else full


# ---- timing -------------------------------------------------------------------------------------------------------

def calibrate(fn: Callable[[], object], seconds: float, warmup: int = 1, max_calls: int = 10_000) -> int:
    """Calls of ``fn`` that take about ``seconds`` (at least 1), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return int(min(max_calls, max(1, round(seconds / once))))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, seconds_per_repeat: float = 0.2,
                budget_s: float = 120.0) -> dict[str, Stat]:
    """Seconds per call of each function, median/min/max over ``repeats``; the repeats alternate between the
    functions (A B C A B C …) so that a load change on the machine hits all of them alike. Stops early (fewer
    repeats, at least one) when ``budget_s`` is spent."""
    return {name: Stat.of(values, "s")
            for name, values in interleaved_raw(fns, repeats, seconds_per_repeat, budget_s).items()}


def interleaved_raw(fns: dict[str, Callable[[], object]], repeats: int, seconds_per_repeat: float = 0.2,
                    budget_s: float = 120.0) -> dict[str, list[float]]:
    """:func:`interleaved`, returning every repeat's seconds per call (to pool repeats taken at different times)."""
    calls = {name: calibrate(fn, seconds_per_repeat) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    for i in range(repeats):
        if i and time.perf_counter() > deadline:
            break
        for name, fn in fns.items():
            n = calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0–100) of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])
