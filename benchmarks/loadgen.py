"""The load generator: ``python -m benchmarks.loadgen SPEC.json`` → one JSON document on stdout.

It runs in its own process (never in the server's), so what it measures includes the client's serialization, the
network stack and the server's deserialization. Requests are pre-serialized bytes sent through a generic unary
method (no protobuf work per request on the client side: the client is not what is being measured), from
``concurrency`` asyncio workers sharing one ``grpc.aio`` channel, each sending its next request as soon as the
previous one is answered (closed loop).

SPEC: ``{"target": "127.0.0.1:PORT", "scenarios": [{"name", "method", "payload" (a file of request bytes),
"concurrency", "warmup_s", "windows", "window_s", "timeout_s"}], "server_pid": PID (optional)}``. A scenario with
``"url"`` (and optional ``"headers"``) instead of ``"method"`` POSTs the payload over HTTP/1.1 keep-alive connections
(aiohttp, one per worker) instead: the HTTP front end measured by the same loop, clock and counters. For each
scenario: requests completed in each window (→ requests/s per window), latency percentiles over every request
completed after the warm-up, per-window p50s, errors by status code, and the CPU seconds that this client and (with
``server_pid``, read from ``/proc``) the server spent during the measured windows — CPU per request is what limits
throughput on a small machine, and it is far less sensitive than wall time to other jobs sharing the cores.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.core import percentile

MAX_MESSAGE = 128 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_at(when: float, pid: int | None) -> tuple[float, float | None]:
    """(this process's CPU, the server's CPU) at ``when`` (perf_counter time)."""
    await asyncio.sleep(max(0.0, when - time.perf_counter()))
    return time.process_time(), process_cpu_s(pid) if pid else None


class HttpError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _http_call(session: Any, spec: dict[str, Any]) -> Any:
    import aiohttp

    url, headers = spec["url"], spec.get("headers", {})

    async def call(payload: bytes, timeout: float) -> bytes:
        async with session.post(url, data=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
            if response.status != 200:
                raise HttpError(response.status)
            return body

    return call


async def scenario(channel: grpc.aio.Channel | None, spec: dict[str, Any], server_pid: int | None = None,
                   session: Any = None) -> dict[str, Any]:
    # no (de)serializers on either transport: bytes in, bytes out
    call = _http_call(session, spec) if "url" in spec else channel.unary_unary(spec["method"])  # type: ignore[union-attr]
    payload = Path(spec["payload"]).read_bytes()
    timeout = float(spec.get("timeout_s", 30.0))
    first = await call(payload, timeout=timeout)  # fails loudly when the target cannot answer at all
    windows, window_s = int(spec["windows"]), float(spec["window_s"])
    begin = time.perf_counter() + float(spec["warmup_s"])
    end = begin + windows * window_s
    counts = [0] * windows
    latencies: list[list[float]] = [[] for _ in range(windows)]
    errors: collections.Counter[str] = collections.Counter()
    cpu = [asyncio.ensure_future(_cpu_at(begin, server_pid)), asyncio.ensure_future(_cpu_at(end, server_pid))]

    async def worker() -> None:
        while (started := time.perf_counter()) < end:
            try:
                await call(payload, timeout=timeout)
            except (grpc.aio.AioRpcError, HttpError) as e:
                errors[f"HTTP {e.status}" if isinstance(e, HttpError) else e.code().name] += 1
                if sum(errors.values()) > 1000:  # a broken target: stop instead of spinning on errors
                    return
                continue
            done = time.perf_counter()
            if begin <= done < end:
                w = int((done - begin) / window_s)
                counts[w] += 1
                latencies[w].append(done - started)

    await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))
    (client0, server0), (client1, server1) = await asyncio.gather(*cpu)
    every = sorted(x for window in latencies for x in window)
    server_cpu = server1 - server0 if server0 is not None and server1 is not None else None
    return {
        "name": spec["name"], "concurrency": int(spec["concurrency"]), "requests": len(every),
        "errors": dict(errors), "window_s": window_s,
        "throughput": [c / window_s for c in counts],
        "p50_per_window_ms": [percentile(sorted(w), 50) * 1e3 for w in latencies if w],
        "latency_ms": {f"p{q}": percentile(every, q) * 1e3 for q in (50, 90, 99)} |
                      {"mean": (sum(every) / len(every) * 1e3) if every else None,
                       "max": every[-1] * 1e3 if every else None},
        "request_bytes": len(payload), "response_bytes": len(first),
        "client_cpu_s": client1 - client0,
        "client_cpu_us_per_request": (client1 - client0) / len(every) * 1e6 if every else None,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_request": server_cpu / len(every) * 1e6 if every and server_cpu is not None else None,
    }


async def main_async(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    limit = max(int(s["concurrency"]) for s in spec["scenarios"])
    async with grpc.aio.insecure_channel(spec["target"], options=OPTIONS) as channel, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
        if any("method" in s for s in spec["scenarios"]):
            await asyncio.wait_for(channel.channel_ready(), 30)
        return [await scenario(channel, s, spec.get("server_pid"), session) for s in spec["scenarios"]]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.loadgen SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    print(json.dumps(asyncio.run(main_async(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
