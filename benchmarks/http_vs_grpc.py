"""Row family ``http``: the HTTP front end against the gRPC front end of the same server process.

One server (``python -m serving serve`` with both ports), one load generator (``benchmarks.loadgen``, a separate
process) and the same requests: the Open Inference Protocol's infer with one image, as an FP32 tensor (gRPC
``raw_input_contents`` vs HTTP with Triton's binary-tensor extension, binary output) and as an encoded image
(BYTES); HTTP with a JSON tensor is measured too (what a client without the binary extension pays). gRPC and HTTP
scenarios alternate, so a load change on a shared machine affects both alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import assets, procs
from benchmarks.core import Context, Row, Stat, judge
from benchmarks.server import INFER, Payloads, payloads
from benchmarks.targets import HTTP_VS_GRPC

HEADER_LENGTH = "Inference-Header-Content-Length"


def _http_payloads(folder: Path, p: Payloads) -> dict[str, tuple[Path, dict[str, str]]]:
    """kind → (request body file, headers) for the HTTP infer requests equivalent to the gRPC ones."""
    from serving.contract.tensors import encode_bytes_elements

    x = p.tensor[None].astype("<f4")
    raw_image = encode_bytes_elements([p.image])
    bodies: dict[str, tuple[bytes, dict[str, str]]] = {}
    for kind, datatype, shape, raw in (("tensor", "FP32", list(x.shape), x.tobytes()),
                                       ("bytes", "BYTES", [1], raw_image)):
        header = json.dumps({"inputs": [{"name": "input", "datatype": datatype, "shape": shape,
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "parameters": {"binary_data_output": True}}).encode()
        bodies[kind] = (header + raw, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})
    bodies["json"] = (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                              "data": x.ravel().tolist()}]}).encode(),
                      {"Content-Type": "application/json"})
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, (body, headers) in bodies.items():
        path = folder / f"http-{kind}.bin"
        path.write_bytes(body)
        out[kind] = (path, headers)
    return out


def run(ctx: Context) -> list[Row]:
    models = [assets.digits(ctx)] if ctx.quick else [assets.digits(ctx), assets.resnet18(ctx)]
    warmup, windows, window_s = (0.2, 2, 0.4) if ctx.quick else (0.5, 3, 1.0)
    pairs = [("tensor", 1), ("tensor", 8)] if ctx.quick else [("tensor", 1), ("tensor", 8), ("bytes", 8)]
    rows: list[Row] = []
    for asset in models:
        p = payloads(ctx, asset)
        http = _http_payloads(ctx.work / "payloads" / asset.name, p)
        port = procs.free_port()
        url = f"http://127.0.0.1:{port}/v2/models/{asset.name}/infer"
        common = {"warmup_s": warmup, "windows": windows, "window_s": window_s, "timeout_s": 30.0}
        scenarios: list[dict[str, Any]] = []
        for kind, conc in [*pairs, ("json", 8)]:
            if kind != "json":
                scenarios.append({"name": f"grpc {kind} c{conc}", "method": INFER, "payload": str(p.files[kind]),
                                  "concurrency": conc, **common})
            body, headers = http[kind]
            scenarios.append({"name": f"http {kind} c{conc}", "url": url, "headers": headers, "payload": str(body),
                              "concurrency": conc, **common})
        ctx.log(f"http: {asset.name}: {len(scenarios)} scenarios, gRPC and HTTP alternating")
        with procs.start_server(ctx, asset.repository, [asset.name], extra=("--http-port", str(port)),
                                tag=f"{asset.name}-http") as server:
            results = {s["name"]: r for s, r in zip(scenarios, procs.run_loadgen(ctx, server.address, scenarios,
                                                                                 server.proc.pid), strict=True)}
        rows += _rows(asset.name, pairs, results)
    return rows


def _details(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests", "errors", "request_bytes", "response_bytes", "server_cpu_us_per_request",
            "client_cpu_us_per_request")
    return {"p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
            **{k: result[k] for k in keys}}


def _rows(name: str, pairs: list[tuple[str, int]], results: dict[str, dict[str, Any]]) -> list[Row]:
    rows = []
    for kind, conc in pairs:
        grpc_result, http_result = results[f"grpc {kind} c{conc}"], results[f"http {kind} c{conc}"]
        base, cand = Stat.of(grpc_result["throughput"], "req/s"), Stat.of(http_result["throughput"], "req/s")
        ratio = cand.median / base.median
        target, met, verdict = None, None, ""
        if kind == "tensor":
            target = "http_vs_grpc"
            met, verdict = judge(ratio, HTTP_VS_GRPC)
        rows.append(Row("http", f"{name} {kind} c{conc}: HTTP (binary extension) vs gRPC, same server",
                        "gRPC ModelInfer", base, "HTTP /v2 infer", cand, ratio, target=target, met=met,
                        verdict=verdict, details={"grpc": _details(grpc_result), "http": _details(http_result)}))
    grpc_result, json_result = results["grpc tensor c8"], results["http json c8"]
    base, cand = Stat.of(grpc_result["throughput"], "req/s"), Stat.of(json_result["throughput"], "req/s")
    rows.append(Row("http", f"{name} tensor c8: HTTP with a JSON tensor vs gRPC (no target: JSON's own cost)",
                    "gRPC ModelInfer", base, "HTTP /v2 infer, JSON data", cand, cand.median / base.median,
                    details={"grpc": _details(grpc_result), "http_json": _details(json_result)}))
    return rows
