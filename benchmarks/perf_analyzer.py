"""Row family ``perf_analyzer``: NVIDIA's perf_analyzer against the server, beside the project's own load generator.

perf_analyzer is the tool Triton's users measure a server with; running it unchanged against ours checks that the
server speaks Triton's protocol as far as that tool cares (its shared-memory setup and its statistics reads), and
gives a second, independent client's numbers. One server (``python -m serving serve``, dynamic batching on) per
model; every repeat runs, one after the other (A B C D A B C D …):

- ``perf_analyzer -m MODEL -i grpc -b 1 --concurrency-range 8 --input-data DIR --shared-memory none``, then
  ``--shared-memory system`` (DIR holds the same FP32 tensor the load generator sends, as perf_analyzer's raw
  ``input`` file; its default random data would contain NaN, which the server refuses);
- the project's load generator (``benchmarks.loadgen``) with the same tensor inline, then through system shared
  memory (the ``shm`` family's scenarios).

Each row is perf_analyzer against the load generator in the same mode (median of the repeats), with perf_analyzer's
client latencies and its "Server:" breakdown (which it reads from Triton's statistics extension) beside the load
generator's own. perf_analyzer comes from ``make perf-analyzer`` (``benchmarks.get_perf_analyzer``); where it cannot
run, the family says why and measures nothing.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import assets, procs, server, shared_memory
from benchmarks.core import Context, Row, Stat
from benchmarks.get_perf_analyzer import PerfAnalyzer, Unavailable, locate


@dataclass(frozen=True)
class Plan:
    repeats: int
    interval_ms: int        # perf_analyzer's measurement window (it needs 3 stable ones)
    warmup_s: float         # the load generator's, before its window of 3 × interval_ms
    concurrency: int


FULL = {"digits": Plan(3, 600, 0.3, 8), "resnet18": Plan(3, 1500, 0.5, 8)}
QUICK = Plan(1, 400, 0.2, 8)
MODES = ("none", "system")


# ---- perf_analyzer's output -----------------------------------------------------------------------------------------

_SERVER_LINE = re.compile(r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute "
                          r"input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)")
_COUNTS = {"requests": re.compile(r"Successful request count: (\d+)"),
           "inferences": re.compile(r"Inference count: (\d+)"), "batches": re.compile(r"Execution count: (\d+)")}


def parse(csv_text: str, stdout: str) -> dict[str, Any]:
    """One perf_analyzer run: its client throughput and latencies (the ``-f`` CSV's single row) and, when it could
    read the server's statistics, the server's breakdown per request in µs (the "Server:" section of its report;
    the keys of :func:`benchmarks.shared_memory.breakdown`)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    if len(rows) != 1:
        raise ValueError(f"expected one row in perf_analyzer's CSV, found {len(rows)}")
    row = rows[0]
    found: dict[str, Any] = {"throughput": float(row["Inferences/Second"]),
                             **{f"{q}_ms": int(row[f"{q} latency"]) / 1e3 for q in ("p50", "p90", "p99")},
                             "server_us": None}
    match = _SERVER_LINE.search(stdout)
    if match:
        request, overhead, queue, c_in, c_infer, c_out = (float(v) for v in match.groups())
        us: dict[str, float] = {"request": request, "queue": queue, "compute_input": c_in, "compute_infer": c_infer,
                                "compute_output": c_out, "overhead": overhead}
        counts = {k: int(m.group(1)) for k, pattern in _COUNTS.items() if (m := pattern.search(stdout))}
        if counts.get("batches"):
            us |= {"requests": float(counts.get("requests", 0)), "batches": float(counts["batches"]),
                   "mean_batch": round(counts.get("inferences", 0) / counts["batches"], 3)}
        found["server_us"] = us
    return found


def run_once(tool: PerfAnalyzer, address: str, model: str, mode: str, data: Path, plan: Plan,
             out: Path) -> dict[str, Any]:
    """One perf_analyzer run; ``{"error": …}`` (its last lines) when it measured nothing, e.g. an unstable load."""
    cmd = tool.command("-m", model, "-u", address, "-i", "grpc", "-b", "1",
                       "--concurrency-range", str(plan.concurrency), "--input-data", str(data),
                       "--shared-memory", mode, "-p", str(plan.interval_ms),
                       # stable = 3 windows within 50 % of each other: a shared machine's load moves more than the
                       # default 10 %, and the repeats, not perf_analyzer's own search, are this run's statistic
                       "-s", "50", "-r", "6", "-f", str(out))
    out.unlink(missing_ok=True)
    budget = 60 + 10 * plan.interval_ms / 1e3
    done = subprocess.run(cmd, env=tool.env, capture_output=True, text=True, timeout=budget, check=False)
    if done.returncode != 0 or not out.is_file():
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        return {"error": f"exit {done.returncode}: {tail}"[:600]}
    return parse(out.read_text(), done.stdout)


# ---- measuring ------------------------------------------------------------------------------------------------------

def measure(ctx: Context, tool: PerfAnalyzer, asset: assets.ModelAsset, plan: Plan) -> dict[str, Any]:
    p = server.payloads(ctx, asset)
    data = ctx.work / "payloads" / asset.name / "perf_analyzer"
    data.mkdir(parents=True, exist_ok=True)
    p.tensor.astype("<f4").tofile(data / "input")  # batch 1 is implicit: the model config's max_batch_size > 0
    loadgen_plan = shared_memory.Plan(1, plan.warmup_s, 3 * plan.interval_ms / 1e3, (plan.concurrency,), (), 0.0)
    found: dict[str, Any] = {"perf_analyzer": {m: [] for m in MODES}, "loadgen": {m: [] for m in MODES}}
    with procs.start_server(ctx, asset.repository, [asset.name], tag=f"{asset.name}-perf-analyzer") as proc:
        reason = shared_memory.probe(proc.address, asset, p.tensor)
        modes = MODES if reason is None else ("none",)
        if reason:
            ctx.note(f"perf_analyzer: {asset.name}: {reason}: --shared-memory none only")
        which = shared_memory.scenarios(ctx, asset, loadgen_plan, p, None, shm=reason is None)
        for r in range(plan.repeats):
            ctx.log(f"perf_analyzer: {asset.name}: repeat {r + 1} of {plan.repeats}: perf_analyzer "
                    f"--shared-memory {'|'.join(modes)}, then the load generator")
            for mode in modes:
                out = ctx.work / f"perf_analyzer-{asset.name}-{mode}.csv"
                result = run_once(tool, proc.address, asset.name, mode, data, plan, out)
                if "error" in result:  # most often no 3 stable windows on a busy machine: once more
                    ctx.log(f"perf_analyzer: {asset.name} --shared-memory {mode}: {result['error']}; again")
                    result = run_once(tool, proc.address, asset.name, mode, data, plan, out)
                found["perf_analyzer"][mode].append(result)
            for s, result in zip(which, procs.run_loadgen(ctx, proc.address, which, proc.proc.pid), strict=True):
                found["loadgen"]["none" if " inline " in s["name"] else "system"].append(result)
    return found


# ---- rows -----------------------------------------------------------------------------------------------------------

def _median(values: list[float]) -> float:
    return float(np.median(values))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over perf_analyzer's successful runs of each number; its failures' messages."""
    ok = [r for r in runs if "error" not in r]
    found: dict[str, Any] = {f"{q}_ms": _median([r[f"{q}_ms"] for r in ok]) for q in ("p50", "p90", "p99")}
    parts = [r["server_us"] for r in ok if r["server_us"]]
    found["server_us"] = {k: _median([b[k] for b in parts]) for k in parts[0]} if parts else None
    found |= {"runs": len(runs), "failed": [r["error"] for r in runs if "error" in r]}
    return found


MODE_TEXT = {"none": "tensor inline", "system": "system shared memory"}


def rows_for(ctx: Context, tool: PerfAnalyzer, asset: assets.ModelAsset, plan: Plan,
             found: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for mode in MODES:
        runs, ours = found["perf_analyzer"][mode], found["loadgen"][mode]
        ok = [r for r in runs if "error" not in r]
        if not ours:
            continue
        if not ok:
            ctx.note(f"perf_analyzer: {asset.name} --shared-memory {mode}: no run measured anything: "
                     f"{runs[-1]['error'] if runs else 'not run'}")
            continue
        pa = Stat.of([r["throughput"] for r in ok], "req/s")
        base = shared_memory.throughput(ours)
        details = {"concurrency": plan.concurrency, "perf_analyzer": tool.version, "threads": ctx.threads,
                   **summary(runs), "baseline": shared_memory.summary(ours)}
        rows.append(Row("perf_analyzer", f"{asset.name} c{plan.concurrency} {MODE_TEXT[mode]}: perf_analyzer vs "
                        "the project's load generator, same server", f"loadgen, gRPC, {MODE_TEXT[mode]}", base,
                        f"perf_analyzer {tool.version} --shared-memory {mode}", pa, pa.median / base.median,
                        ratio_label="client ratio (perf_analyzer req/s / loadgen req/s)", details=details))
    inline, shm = ([r for r in found["perf_analyzer"][m] if "error" not in r] for m in MODES)
    if inline and shm:
        base, cand = (Stat.of([r["throughput"] for r in runs], "req/s") for runs in (inline, shm))
        rows.append(Row("perf_analyzer", f"{asset.name} c{plan.concurrency}: perf_analyzer --shared-memory system vs "
                        "none", "perf_analyzer, tensor inline", base, "perf_analyzer, system shared memory", cand,
                        cand.median / base.median,
                        details={"concurrency": plan.concurrency, "perf_analyzer": tool.version,
                                 **summary(found["perf_analyzer"]["system"]),
                                 "baseline": summary(found["perf_analyzer"]["none"])}))
    return rows


def run(ctx: Context) -> list[Row]:
    try:
        tool = locate()
    except Unavailable as e:
        ctx.note(f"perf_analyzer: not measured: {e}")
        return []
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    rows: list[Row] = []
    for asset in models:
        plan = QUICK if ctx.quick else FULL[asset.name]
        found = measure(ctx, tool, asset, plan)
        found_rows = rows_for(ctx, tool, asset, plan, found)
        if not found_rows:
            raise RuntimeError(f"perf_analyzer measured nothing on {asset.name}: "
                               f"{[r['error'] for runs in found['perf_analyzer'].values() for r in runs][-1:]}")
        rows += found_rows
    return rows
