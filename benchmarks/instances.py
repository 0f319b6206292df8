"""Row family ``instances``: one model served with ``--instances 1`` against ``--instances N`` (N onnxruntime sessions
sharing the same ``--threads``, each with its own batches), same load generator, payloads and concurrency.

The payloads are the ``server`` family's (OIP ModelInfer, one FP32 tensor or one encoded image per request). The
instance counts are measured one after the other in interleaved rounds (1, N, 1, N, …), so a load change on a shared
machine affects both alike; the ratio is requests/s with N instances ÷ with one.
"""

from __future__ import annotations

from typing import Any

from benchmarks import assets, procs, server
from benchmarks.core import Context, Row, Stat

SCENARIOS = (("tensor", 1), ("tensor", 8), ("bytes", 8))
PLAN = server.Plan(0.5, 2, 1.0, echo=(), batching_on=SCENARIOS, batching_off=())
QUICK_PLAN = server.Plan(0.2, 1, 0.4, echo=(), batching_on=(("tensor", 8),), batching_off=())


def measure(ctx: Context, asset: assets.ModelAsset, counts: tuple[int, ...], plan: server.Plan,
            p: server.Payloads, rounds: int) -> dict[int, dict[tuple[str, int], list[dict[str, Any]]]]:
    """Per instance count and scenario, the load generator's result of each round."""
    found: dict[int, dict[tuple[str, int], list[dict[str, Any]]]] = {n: {} for n in counts}
    for r in range(rounds):
        for n in counts:
            ctx.log(f"instances: {asset.name}: --instances {n} (round {r + 1} of {rounds})")
            with procs.start_server(ctx, asset.repository, [asset.name], extra=["--instances", str(n)],
                                    tag=f"{asset.name}-instances{n}") as proc:
                results = procs.run_loadgen(ctx, proc.address,
                                            server.scenarios(plan, p, plan.batching_on, f"i{n}"), proc.proc.pid)
            for key, result in zip(plan.batching_on, results, strict=True):
                found[n].setdefault(key, []).append(result)
    return found


def _pooled(results: list[dict[str, Any]]) -> Stat:
    return Stat.of([rate for result in results for rate in result["throughput"]], "req/s")


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    plan = QUICK_PLAN if ctx.quick else PLAN
    n = 2
    rows: list[Row] = []
    for asset in models:
        p = server.payloads(ctx, asset)
        found = measure(ctx, asset, (1, n), plan, p, rounds=1 if ctx.quick else 2)
        for kind, conc in plan.batching_on:
            one, many = _pooled(found[1][(kind, conc)]), _pooled(found[n][(kind, conc)])
            last = {k: server.latency(found[k][(kind, conc)][-1]) for k in (1, n)}
            rows.append(Row("instances", f"{asset.name} {kind} c{conc}: --instances {n} vs 1",
                            "server, --instances 1", one, f"server, --instances {n}", many,
                            many.median / one.median,
                            details={"concurrency": conc, "payload": server.KIND_TEXT[kind], "threads": ctx.threads,
                                     "threads_per_instance": max(1, ctx.threads // n),
                                     "instances_1": last[1], f"instances_{n}": last[n]}))
    return rows
