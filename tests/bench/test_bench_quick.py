"""``python -m benchmarks --quick`` end to end, as a subprocess writing into a temporary results folder.

This is the only benchmark ``make test`` runs. It checks that every quick family runs and that the JSON and the
markdown have the promised structure; it never asserts a speed (timings on a shared machine are not test results).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.get_perf_analyzer import PerfAnalyzer, Unavailable, locate
from benchmarks.report import CPU_FEATURES
from benchmarks.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
QUICK_FAMILIES = {"runtime", "server", "instances", "http", "explain", "photos", "batch", "numpy", "startup", "shm",
                  "perf_analyzer"}
# .ci/run fetches perf_analyzer and says so: then its family must measure, not only explain why it could not.
PERF_ANALYZER_REQUIRED = os.environ.get("PERF_ANALYZER_TESTS") == "1"


def _perf_analyzer() -> tuple[PerfAnalyzer | None, str]:
    try:
        return locate(), ""
    except Unavailable as e:
        return None, str(e)


def _measured_families() -> set[str]:
    """The families that must have rows: perf_analyzer's only where its binary runs."""
    return QUICK_FAMILIES if _perf_analyzer()[0] else QUICK_FAMILIES - {"perf_analyzer"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    results = tmp_path_factory.mktemp("bench-results")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--results", str(results)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    return done, results


@pytest.fixture(scope="module")
def doc(quick: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, results = quick
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = results.glob("*-quick.json")
    return json.loads(path.read_text())


def _stat_ok(stat: dict[str, Any]) -> bool:
    return (stat["n"] >= 1 and stat["unit"] and all(math.isfinite(stat[k]) for k in ("median", "min", "max"))
            and stat["min"] <= stat["median"] <= stat["max"])


@pytest.mark.slow
def test_quick_run_prints_the_table_and_writes_only_quick_files(
        quick: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, results = quick
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Targets (benchmarks/targets.py):" in done.stdout
    assert "== server ==" in done.stdout
    assert sorted(p.name for p in results.iterdir())[-1] == "latest-quick.md"
    assert not (results / "latest.md").exists()  # a quick check never replaces the full table


@pytest.mark.slow
def test_document_has_machine_info_and_every_quick_family(doc: dict[str, Any]) -> None:
    assert doc["schema"] == "resnet-serving-bench/1"
    assert doc["quick"] is True
    assert doc["threads"] == 2
    machine = doc["machine"]
    assert machine["cpu_model"]
    assert set(machine["cpu_features"]) <= set(CPU_FEATURES)
    assert machine["usable_cores"] >= 1
    assert machine["python"]
    assert all(machine["versions"][name] for name in ("torch", "onnxruntime", "grpcio", "numpy"))
    assert set(doc["families"]) == QUICK_FAMILIES
    assert all(f["error"] is None for f in doc["families"].values())
    assert all(doc["families"][name]["rows"] > 0 for name in _measured_families())
    assert {row["family"] for row in doc["rows"]} == _measured_families()


@pytest.mark.slow
def test_every_row_is_a_ratio_of_two_measurements(doc: dict[str, Any]) -> None:
    for row in doc["rows"]:
        assert _stat_ok(row["baseline_stat"]), row["name"]
        assert _stat_ok(row["candidate_stat"]), row["name"]
        assert row["ratio"] > 0, row["name"]
        assert math.isfinite(row["ratio"]), row["name"]
        assert row["target"] is None or row["target"] in TARGETS
        assert row["met"] in (True, False, None)
        if row["target"] is not None:
            assert row["verdict"]
            assert row["target_text"] == TARGETS[row["target"]]


@pytest.mark.slow
def test_server_rows_carry_latency_percentiles_and_no_errors(doc: dict[str, Any]) -> None:
    server = [r for r in doc["rows"] if r["family"] == "server" and "p50_ms" in r["details"]]
    assert server
    for row in server:
        d = row["details"]
        assert 0 < d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"], row["name"]
        assert d["errors"] == {}, row["name"]
        assert d["requests"] > 0, row["name"]


@pytest.mark.slow
def test_the_quick_targets_are_judged(doc: dict[str, Any]) -> None:
    judged = {t["key"]: t["met"] for t in doc["targets"]}
    assert set(judged) == set(TARGETS)
    for key in ("server_p50", "digits_server", "cold_start", "memory"):
        assert judged[key] in (True, False), key  # measured in quick mode, whatever the verdict
    # training and ResNet-18: not in --quick
    for key in ("digits_accuracy", "int8_speed", "server_vs_inproc", "server_shm_vs_inproc"):
        assert judged[key] is None, key


@pytest.mark.slow
def test_markdown_table_lists_every_row(quick: tuple[subprocess.CompletedProcess[str], Path],
                                        doc: dict[str, Any]) -> None:
    text = (quick[1] / "latest-quick.md").read_text()
    assert "| benchmark | baseline | candidate | ratio | target |" in text
    for row in doc["rows"]:
        assert row["name"].replace("|", "\\|") in text


@pytest.mark.slow
def test_shm_rows_compare_shared_memory_with_inline_and_in_process(doc: dict[str, Any]) -> None:
    rows = {r["name"]: r for r in doc["rows"] if r["family"] == "shm"}
    assert set(rows) == {"digits c8: gRPC inline tensor vs in-process ORT",
                         "digits c8: gRPC system shared memory vs in-process ORT",
                         "digits c8: gRPC system shared memory vs inline tensor"}
    for row in rows.values():
        d = row["details"]
        assert d["errors"] == {}, row["name"]
        assert d["repeats"] == row["candidate_stat"]["n"] == 2, row["name"]
        assert 0 < d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"], row["name"]
        us = d["server_us"]  # the statistics extension's breakdown, beside the client's numbers
        assert us["requests"] > 0, row["name"]
        assert us["mean_batch"] >= 1, row["name"]
        assert 0 < us["compute_infer"] < us["request"], row["name"]
    assert rows["digits c8: gRPC system shared memory vs inline tensor"]["details"]["baseline"]["server_us"]


@pytest.mark.slow
def test_perf_analyzer_family_measures_or_says_why(doc: dict[str, Any]) -> None:
    tool, reason = _perf_analyzer()
    if tool is None:
        assert not PERF_ANALYZER_REQUIRED, f"PERF_ANALYZER_TESTS=1, but {reason}"
        assert f"perf_analyzer: not measured: {reason}" in doc["notes"]
        return
    rows = {r["name"]: r for r in doc["rows"] if r["family"] == "perf_analyzer"}
    assert set(rows) == {
        "digits c8 tensor inline: perf_analyzer vs the project's load generator, same server",
        "digits c8 system shared memory: perf_analyzer vs the project's load generator, same server",
        "digits c8: perf_analyzer --shared-memory system vs none"}
    for row in rows.values():
        d = row["details"]
        assert d["perf_analyzer"] == tool.version, row["name"]
        assert 0 < d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"], row["name"]
        assert d["server_us"]["requests"] > 0, row["name"]  # its "Server:" section: it read our statistics
        assert d["baseline"]["server_us"]["requests"] > 0, row["name"]
