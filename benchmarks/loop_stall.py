"""Row family ``loop``: the longest step that one request of the largest size the limits allow holds the event loop.

Both front ends share one asyncio loop: while it parses a body or encodes an answer, every other client waits. One
server (``python -m serving serve``, defaults but for the ports) with the ResNet-18 asset (1000 classes, 224-px RGB:
the largest answers) and the digits model; each scenario sends its request ``REPEATS`` times, one at a time, and reads
the server's own ``serving_event_loop_step_cpu_seconds`` histogram (the loop thread's CPU time in each window of a
10 ms timer) before and after. The row is the longest CPU step the scenario caused, as the upper bound of the highest
histogram bucket it reached (the lag every client felt, which adds the time the loop thread could not run, is in the
details), against the target of 50 ms ("no single CPU step on the loop longer than about 50 ms"). Baseline: the
same server over the same number of small requests (one digits image).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import assets, procs
from benchmarks.core import Context, Row, Stat
from benchmarks.targets import LOOP_STEP_MS

REPEATS = 5
BEYOND_MS = 10_000.0  # above the histogram's highest bound (5 s)
MIB = 1 << 20


def _lag_buckets(metrics_port: int) -> dict[str, dict[float, float]]:
    """histogram ("lag" or "step_cpu") → le → cumulative count, from the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[float, float]] = {"lag": {}, "step_cpu": {}}
    for line in text.splitlines():
        for key in out:
            if line.startswith(f"serving_event_loop_{key}_seconds_bucket{{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[key][float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def _longest(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """(upper bound in ms of the highest bucket that got an observation, observations over the target) between two
    scrapes of the cumulative histogram."""
    bounds = sorted(after)
    grew = [after[b] - before.get(b, 0.0) for b in bounds]
    counts = [n - (grew[i - 1] if i else 0.0) for i, n in enumerate(grew)]
    highest = max((b for b, n in zip(bounds, counts, strict=True) if n > 0), default=0.0)
    over = int(sum(n for b, n in zip(bounds, counts, strict=True) if b > LOOP_STEP_MS / 1e3))
    return (highest * 1e3 if highest != float("inf") else BEYOND_MS), over


def _http(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def _multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "loopbenchboundary7d1"
    parts = [b"".join([f"--{boundary}\r\n".encode(),
                       f'Content-Disposition: form-data; name="image"; filename="{i}.jpg"\r\n'.encode(),
                       b"Content-Type: image/jpeg\r\n\r\n", f, b"\r\n"]) for i, f in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _scenarios(ctx: Context, http: str, grpc_address: str, r18: assets.ModelAsset,
               digits: assets.ModelAsset) -> dict[str, tuple[Callable[[], Any], str]]:
    """name → (send one request, what it is)."""
    import tritonclient.grpc as grpcclient

    from serving.http.kserve import HEADER_LENGTH, MAX_JSON_BYTES

    client = grpcclient.InferenceServerClient(grpc_address)
    output = r18.manifest["output"]["name"]
    c, h, w = r18.input_shape
    per_image = 4 * c * h * w
    max_images = (64 * MIB) // per_image - 1  # the largest tensor under --max-message-mb's default, 64 MiB
    tensor = np.random.default_rng(0).standard_normal((max_images, c, h, w)).astype(np.float32)
    jpeg = assets.encode(assets.photo(3, (w, h)), "JPEG")
    small = assets.encode(assets.draw(1, (16, 16), "L"), "PNG")

    # JSON: the worst case per byte, one-digit numbers ("0,"), as many whole images as fit under MAX_JSON_BYTES
    fit = max(1, (MAX_JSON_BYTES - 200) // (2 * c * h * w))
    json_tensor = (f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[{fit},{c},{h},{w}],"data":['
                   + ",".join(["0"] * (fit * c * h * w)) + "]}]}").encode()
    # JSON BYTES: base64 images filling the JSON limit (≤ 256 images)
    b64 = base64.b64encode(jpeg).decode()
    n_b64 = min(max_images, (MAX_JSON_BYTES - 300) // (len(b64) + 3))
    json_b64 = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [n_b64],
                                       "parameters": {"content_type": "base64"}, "data": [b64] * n_b64}]}).encode()
    # binary extension: the largest tensor, JSON output asked for (every logit as a JSON number)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(tensor.shape),
                                     "parameters": {"binary_data_size": tensor.nbytes}}]}).encode()
    binary = header + tensor.tobytes()
    multipart, multipart_type = _multipart([jpeg] * max_images)  # more would decode to a tensor over the limit
    small_multipart, small_type = _multipart([small])
    base = f"{http}/v2/models"

    def grpc_infer() -> int:
        x = grpcclient.InferInput("input", list(tensor.shape), "FP32")
        x.set_data_from_numpy(tensor)
        client.infer(r18.name, [x])
        return 200

    def grpc_classify_all() -> int:
        x = grpcclient.InferInput("input", [max_images], "BYTES")
        x.set_data_from_numpy(np.array([jpeg] * max_images, dtype=np.object_))
        client.infer(r18.name, [x], outputs=[grpcclient.InferRequestedOutput(output, class_count=1000)])
        return 200

    return {
        "baseline": (lambda: _http(f"{http}/v1/models/{digits.name}/classify", small_multipart,
                                   {"Content-Type": small_type}), "one 16-px PNG, /v1 classify (digits)"),
        "http json tensor": (lambda: _http(f"{base}/{r18.name}/infer", json_tensor,
                                           {"Content-Type": "application/json"}),
                             f"/v2 infer, a JSON FP32 tensor of {fit} images in one-digit numbers, "
                             f"{len(json_tensor) / MIB:.1f} MiB"),
        "http json base64": (lambda: _http(f"{base}/{r18.name}/infer", json_b64, {"Content-Type": "application/json"}),
                             f"/v2 infer, {n_b64} base64 JPEGs in JSON, {len(json_b64) / MIB:.1f} MiB"),
        "http binary, json output": (lambda: _http(f"{base}/{r18.name}/infer", binary,
                                                   {HEADER_LENGTH: str(len(header)),
                                                    "Content-Type": "application/octet-stream"}),
                                     f"/v2 infer, binary FP32 {max_images} images ({tensor.nbytes / MIB:.0f} MiB), "
                                     f"{max_images}x1000 logits answered as JSON"),
        "http multipart classify": (lambda: _http(f"{http}/v1/models/{r18.name}/classify?top_k=1000", multipart,
                                                  {"Content-Type": multipart_type}),
                                    f"/v1 classify, {max_images} JPEG files in multipart "
                                    f"({len(multipart) / MIB:.1f} MiB), top_k 1000 ({max_images * 1000:,} predictions "
                                    "answered)"),
        "grpc infer": (grpc_infer, f"ModelInfer, FP32 {max_images} images ({tensor.nbytes / MIB:.0f} MiB)"),
        "grpc class_count": (grpc_classify_all, f"ModelInfer, {max_images} JPEGs, class_count 1000 "
                                                f"({max_images * 1000:,} strings)"),
    }


def run(ctx: Context) -> list[Row]:
    r18, digits = assets.resnet18(ctx), assets.digits(ctx)
    http_port, metrics_port = procs.free_port(), procs.free_port()
    rows: list[Row] = []
    with procs.start_server(ctx, r18.repository, [r18.name, digits.name], tag="loop",
                            extra=("--http-port", str(http_port), "--metrics-port", str(metrics_port))) as server:
        scenarios = _scenarios(ctx, f"http://127.0.0.1:{http_port}", server.address, r18, digits)
        measured: dict[str, dict[str, Any]] = {}
        for name, (send, what) in scenarios.items():
            send()  # warm: the first request of a kind pays for allocations the others reuse
            before = _lag_buckets(metrics_port)
            started = time.perf_counter()
            statuses = [send() for _ in range(REPEATS)]
            seconds = (time.perf_counter() - started) / REPEATS
            after = _lag_buckets(metrics_port)
            longest, over = _longest(before["step_cpu"], after["step_cpu"])
            lag, lag_over = _longest(before["lag"], after["lag"])
            measured[name] = {"what": what, "longest_ms": longest, "over_50ms": over, "lag_ms": lag,
                              "lag_over_50ms": lag_over, "seconds": round(seconds, 3), "statuses": statuses}
            ctx.log(f"loop: {name}: longest CPU step ≤ {longest:g} ms ({over} over {LOOP_STEP_MS} ms), longest lag "
                    f"≤ {lag:g} ms ({lag_over} over), {seconds:.2f} s a request, statuses {sorted(set(statuses))}")
            if set(statuses) != {200}:
                raise RuntimeError(f"{name}: answered {statuses}, not 200: the scenario measures nothing")
    base = measured.pop("baseline")
    for name, m in measured.items():
        met = m["longest_ms"] <= LOOP_STEP_MS
        rows.append(Row("loop", f"{name}: {m['what']}", "one small request", Stat.one(base["longest_ms"], "ms"),
                        name, Stat.one(m["longest_ms"], "ms"), m["longest_ms"] / LOOP_STEP_MS,
                        ratio_label=f"the longest CPU step on the event loop (its histogram bucket's upper bound) ÷ "
                                    f"the {LOOP_STEP_MS} ms target: <= 1 is met",
                        target="loop_step", met=met,
                        verdict=f"≤ {m['longest_ms']:g} ms {'<=' if met else '>'} {LOOP_STEP_MS} ms "
                                f"({m['over_50ms']} steps over in {REPEATS} requests)", details=m))
    return rows
