"""Row family ``startup``: server cold start to health SERVING, and resident memory after warm-up.

Cold start is timed from spawning ``python -m serving serve`` (digits model) to the first health check answering
SERVING for the whole server — interpreter start, imports, model load, sha256 and golden self-check, port open.
Its baseline is the interpreter plus the server's imports (``python -c "import serving.server"``), so the ratio
shows what the server adds on top of what any Python gRPC + onnxruntime process pays. Memory (VmRSS) is read after
a few hundred requests (tensors and PNGs), against a bare grpc.aio echo process after the same requests.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from benchmarks import assets, procs
from benchmarks.core import Context, Row, Stat
from benchmarks.server import payloads
from benchmarks.targets import COLD_START_S, MEMORY_MB

WARMUP_REQUESTS = 200


def _import_seconds(ctx: Context) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import serving.server, serving.cli"], cwd=ctx.root,
                   env=procs.child_env(ctx), check=True, timeout=120)
    return time.perf_counter() - start


def _warm_up(address: str, asset: assets.ModelAsset, image: bytes, tensor: np.ndarray, count: int) -> None:
    from serving.client import Client

    with Client(address, asset.name, timeout=30) as client:
        for i in range(count):
            client.classify(image if i % 2 else tensor)


def run(ctx: Context) -> list[Row]:
    asset = assets.digits(ctx)
    p = payloads(ctx, asset)
    count = 40 if ctx.quick else WARMUP_REQUESTS
    ready, imports, rss, hwm = [], [], [], []
    for i in range(ctx.repeats(3, quick=1)):
        ctx.log(f"startup: cold start {i + 1}")
        imports.append(_import_seconds(ctx))
        with procs.start_server(ctx, asset.repository, [asset.name], tag="cold") as server:
            ready.append(server.ready_s)
            _warm_up(server.address, asset, p.image, p.tensor, count)
            memory = server.memory()
            rss.append(memory["VmRSS"])
            hwm.append(memory["VmHWM"])
    with procs.start_echo(ctx, p.responses) as echo:
        procs.run_loadgen(ctx, echo.address, [{"name": "warm", "method": p.methods["tensor"],
                                               "payload": str(p.files["tensor"]), "concurrency": 1, "warmup_s": 0,
                                               "windows": 1, "window_s": 0.3, "timeout_s": 10}])
        echo_rss = echo.memory()["VmRSS"]
    ready_s, import_s = Stat.of(ready, "s"), Stat.of(imports, "s")
    rss_mb = Stat.of(rss, "MB")
    ready_met, rss_met = ready_s.median <= COLD_START_S, rss_mb.median <= MEMORY_MB
    return [
        Row("startup", "digits: server cold start to health SERVING", "python -c 'import serving.server' (imports "
            "only)", import_s, "python -m serving serve → SERVING", ready_s, import_s.median / ready_s.median,
            target="cold_start", met=ready_met,
            verdict=f"{ready_s.median:.2f} s {'<=' if ready_met else '>'} {COLD_START_S} s",
            details={"includes": "interpreter, imports, model load, sha256, golden self-check, port open",
                     "threads": ctx.threads}),
        Row("startup", f"digits: server resident memory after {count} requests", "bare grpc.aio echo process",
            Stat.one(echo_rss, "MB"), "server (VmRSS)", rss_mb, rss_mb.median / echo_rss,
            ratio_label="memory ratio (server / echo)", target="memory", met=rss_met,
            verdict=f"{rss_mb.median:.0f} MB {'<=' if rss_met else '>'} {MEMORY_MB:.0f} MB",
            details={"peak_VmHWM_mb": Stat.of(hwm, "MB").median}),
    ]
