"""The arithmetic every benchmark row relies on: statistics of repeats, speed ratios, verdicts, percentiles, and the
target summary (pure functions, no timing)."""

from __future__ import annotations

import math

import pytest

from benchmarks.__main__ import parse_args
from benchmarks.core import Row, Stat, interleaved, judge, percentile, speed_ratio
from benchmarks.report import markdown, targets_summary
from benchmarks.targets import TARGETS


def test_stat_of_repeats_and_its_conversions() -> None:
    s = Stat.of([3.0, 1.0, 2.0, 10.0], "s")
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    ms = s.scaled(1e3, "ms")
    assert (ms.median, ms.min, ms.max, ms.unit) == (2500.0, 1000.0, 10000.0, "ms")
    rate = s.rate(10, "img/s")  # the slowest repeat gives the lowest rate
    assert (rate.median, rate.min, rate.max) == (4.0, 1.0, 10.0)
    assert s.text() == "2.5 [1–10] s"
    with pytest.raises(ValueError, match="no values"):
        Stat.of([], "s")


def test_speed_ratio_is_oriented_so_that_above_one_means_faster() -> None:
    slow, fast = Stat.one(10.0, "ms"), Stat.one(4.0, "ms")
    assert speed_ratio(slow, fast) == 2.5
    assert speed_ratio(Stat.one(100.0, "req/s"), Stat.one(50.0, "req/s")) == 0.5
    with pytest.raises(ValueError, match="cannot compare ms with req/s"):
        speed_ratio(slow, Stat.one(1.0, "req/s"))


def test_judge_says_by_how_much() -> None:
    assert judge(1.93, 2.0) == (False, "1.93x < 2x")
    assert judge(2.0, 2.0) == (True, "2.00x >= 2x")
    assert judge(None, 2.0) == (None, "not measured")
    assert judge(math.nan, 2.0) == (None, "not measured")


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50.0, 90.0, 99.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_interleaved_times_each_function_and_stops_at_its_budget() -> None:
    calls = {"a": 0, "b": 0}

    def count(name: str):  # type: ignore[no-untyped-def]
        return lambda: calls.__setitem__(name, calls[name] + 1)

    stats = interleaved({"a": count("a"), "b": count("b")}, repeats=3, seconds_per_repeat=0.001)
    assert set(stats) == {"a", "b"}
    assert all(s.n == 3 and s.unit == "s" for s in stats.values())
    assert calls["a"] > 3
    assert calls["b"] > 3
    assert interleaved({"a": count("a")}, repeats=100, seconds_per_repeat=0.001, budget_s=0.0)["a"].n == 1


def test_targets_summary_needs_every_judged_row_to_pass() -> None:
    def row(target: str, met: bool | None) -> Row:
        return Row("f", f"{target} {met}", "b", Stat.one(1, "s"), "c", Stat.one(1, "s"), 1.0, target=target,
                   met=met, verdict="v")

    summary = {t["key"]: t["met"] for t in targets_summary([row("server_p50", True), row("server_p50", False),
                                                             row("memory", True), row("cold_start", None)])}
    assert set(summary) == set(TARGETS)
    assert summary["server_p50"] is False
    assert summary["memory"] is True
    assert summary["cold_start"] is None
    assert summary["digits_accuracy"] is None


def test_markdown_escapes_pipes_and_marks_runs_under_load() -> None:
    rows = [Row("f", "a | b", "base", Stat.one(2, "ms"), "cand", Stat.one(1, "ms"), 2.0, target="int8_speed",
                met=True, verdict="2.00x >= 2x")]
    doc = {"command": "python -m benchmarks", "finished": "2026-01-01T00:00:00", "quick": False, "threads": 2,
           "seconds": 1.0, "under_load": True, "notes": ["n"], "targets": targets_summary(rows),
           "machine": {"host": "h", "cpu_model": "cpu", "usable_cores": 2, "load_average_at_start": [3.0],
                       "python": "3.11", "versions": {"torch": "t", "onnxruntime": "o", "grpcio": "g", "numpy": "n"}}}
    text = markdown(doc, rows)
    assert "| a \\| b | base: 2 ms | cand: 1 ms | 2.00x | met (2.00x >= 2x) |" in text
    assert "| met (a \\| b: 2.00x >= 2x) |" in text  # the targets table names the row each verdict is from
    assert f"| {TARGETS['http_vs_grpc']} | not measured yet |" in text  # a target no row judged is still listed
    assert "shared with other jobs" in text
    assert "on h: cpu, 2 usable cores" in text  # a document from before the CPU's features were recorded
    doc["machine"]["cpu_features"] = ["avx2", "avx512_vnni"]
    assert "on h: cpu (avx2, avx512_vnni), 2 usable cores" in markdown(doc, rows)


def test_unknown_family_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--only", "gpu"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
