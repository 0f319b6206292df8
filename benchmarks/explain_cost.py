"""Row family ``explain``: what an explanation costs, and that nobody else pays for it.

One server process (``python -m serving serve``, HTTP port on) and the load generator at concurrency 1: a plain
``/v1`` classify of one image against ``/v1 explain`` of the same image with the class activation map (the explain
graph: one forward pass with more outputs), with the stage maps too, and with occlusion (49 occluded copies through
the served model's batcher). Then the served model's own speed when nobody asks for explanations, before and after
the explain requests (ModelInfer, FP32 tensor, concurrency 8): the explain graph is a separate session, loaded on
first use, so the served path must not change.
"""

from __future__ import annotations

from typing import Any

from benchmarks import assets, procs
from benchmarks.core import Context, Row, Stat
from benchmarks.server import INFER, payloads

VARIANTS = (("classify", "classify", {}), ("cam", "explain", {"method": "cam"}),
            ("cam+stages", "explain", {"method": "cam", "stages": "1"}),
            ("occlusion", "explain", {"method": "occlusion"}))


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    warmup, windows, window_s = (0.2, 2, 0.5) if ctx.quick else (0.5, 3, 1.5)
    rows: list[Row] = []
    for asset in models:
        p = payloads(ctx, asset)
        image = ctx.work / "payloads" / asset.name / "explain-image.bin"
        image.write_bytes(p.image)
        port = procs.free_port()
        common = {"warmup_s": warmup, "windows": windows, "window_s": window_s, "timeout_s": 60.0}
        infer = {"method": INFER, "payload": str(p.files["tensor"]), "concurrency": 8, **common}
        scenarios: list[dict[str, Any]] = [{"name": "infer before", **infer}]
        for tag, path, query in VARIANTS:
            url = f"http://127.0.0.1:{port}/v1/models/{asset.name}/{path}?" + "&".join(f"{k}={v}"
                                                                                       for k, v in query.items())
            scenarios.append({"name": tag, "url": url, "payload": str(image), "concurrency": 1, **common})
        scenarios.append({"name": "infer after", **infer})
        ctx.log(f"explain: {asset.name}: classify vs explain (cam, cam+stages, occlusion), served speed before/after")
        with procs.start_server(ctx, asset.repository, [asset.name], extra=("--http-port", str(port)),
                                tag=f"{asset.name}-explain") as server:
            found = dict(zip([s["name"] for s in scenarios],
                             procs.run_loadgen(ctx, server.address, scenarios, server.proc.pid), strict=True))
        rows += _rows(asset.name, p.image_text, found)
    return rows


def _latency(result: dict[str, Any]) -> Stat:
    return Stat.of(result["p50_per_window_ms"], "ms")


def _rows(name: str, image_text: str, found: dict[str, dict[str, Any]]) -> list[Row]:
    rows = []
    classify = _latency(found["classify"])
    for tag, _, _ in VARIANTS[1:]:
        result = found[tag]
        if result["errors"] or not result["requests"]:
            rows.append(Row("explain", f"{name}: explain ({tag}) vs classify, one image", "classify p50", classify,
                            f"explain ({tag})", None, None, details={"errors": result["errors"]},
                            verdict=f"not measured: {result['errors']}"))
            continue
        cost = _latency(result)
        rows.append(Row("explain", f"{name}: explain ({tag}) vs classify, one image ({image_text}), concurrency 1",
                        "/v1 classify p50", classify, f"/v1 explain ({tag}) p50", cost,
                        cost.median / classify.median, ratio_label="latency ratio (explain / classify)",
                        details={"response_bytes": result["response_bytes"], "requests": result["requests"]}))
    before, after = (Stat.of(found[k]["throughput"], "req/s") for k in ("infer before", "infer after"))
    # Throughput drifts over a run on a shared machine; the server's CPU per request hardly does, so it is the
    # figure that shows whether the explain session costs the served path anything.
    cpu = {k: found[f"infer {k}"]["server_cpu_us_per_request"] for k in ("before", "after")}
    rows.append(Row("explain", f"{name}: served ModelInfer c8 after explanations vs before (same server)",
                    "before any explain request", before, "after the explain requests", after,
                    after.median / before.median,
                    details={"server_cpu_us_per_request": cpu,
                             "cpu_ratio_after_vs_before": cpu["after"] / cpu["before"] if all(cpu.values()) else None,
                             "before_errors": found["infer before"]["errors"],
                             "after_errors": found["infer after"]["errors"]}))
    return rows
