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

Two optional parts of a scenario:

- ``"shm"``: system shared memory, as a sidecar client uses it. ``{"tensor": FILE of the input's raw bytes,
  "input_shape", "output_bytes", "output_shape", "regions": [{"input": [NAME, KEY], "output": [NAME, KEY]}, …]}``
  and ``"payloads"`` (one request FILE per worker, naming that worker's regions) instead of ``"payload"``. Each worker
  creates its two POSIX objects and registers them once (tritonclient's ``register_system_shared_memory``), then
  for every request writes the tensor into its input region, sends the request, and copies the logits out of its
  output region; at the end it unregisters and unlinks them. Setting up is not timed.
- ``"statistics": MODEL``: the model's statistics (Triton's extension, tritonclient's ``get_inference_statistics``)
  read at the start and the end of the measured windows, returned as ``server_statistics`` {"before", "after"} (or
  ``{"error": …}`` when the server has no such extension).
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
import numpy as np

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


class SharedMemoryWorker:
    """One worker's input and output regions of system shared memory, registered with the server."""

    def __init__(self, shm: dict[str, Any], regions: dict[str, list[str]], tensor: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm_utils

        self._utils = shm_utils
        self.tensor = tensor
        self.output_shape = tuple(shm["output_shape"])
        # (name, key, byte size) of the input region, then of the output region
        self.regions = [(*regions["input"], tensor.nbytes), (*regions["output"], int(shm["output_bytes"]))]
        self.handles = [shm_utils.create_shared_memory_region(name, key, size, create_only=True)
                        for name, key, size in self.regions]

    async def register(self, client: Any) -> None:
        for name, key, size in self.regions:
            await client.register_system_shared_memory(name, key, size)

    def write_input(self) -> None:
        self._utils.set_shared_memory_region(self.handles[0], [self.tensor])

    def read_output(self) -> np.ndarray:
        return self._utils.get_contents_as_numpy(self.handles[1], np.float32, self.output_shape).copy()

    async def close(self, client: Any) -> None:
        for name, _, _ in self.regions:
            try:
                await client.unregister_system_shared_memory(name)
            except Exception as e:  # the server may be gone; the objects are unlinked all the same
                print(f"loadgen: unregistering {name}: {e}", file=sys.stderr)
        for handle in self.handles:
            self._utils.destroy_shared_memory_region(handle)


async def _statistics_at(when: float, client: Any, model: str) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, when - time.perf_counter()))
    return await client.get_inference_statistics(model_name=model, as_json=True)


def _triton_client(target: str) -> Any:
    import tritonclient.grpc.aio as triton

    return triton.InferenceServerClient(target)


async def scenario(channel: grpc.aio.Channel | None, spec: dict[str, Any], server_pid: int | None = None,
                   session: Any = None, target: str = "") -> dict[str, Any]:
    # no (de)serializers on either transport: bytes in, bytes out
    call = _http_call(session, spec) if "url" in spec else channel.unary_unary(spec["method"])  # type: ignore[union-attr]
    concurrency = int(spec["concurrency"])
    payloads = [Path(f).read_bytes() for f in spec["payloads"]] if "payloads" in spec else \
        [Path(spec["payload"]).read_bytes()] * concurrency
    timeout = float(spec.get("timeout_s", 30.0))
    client = _triton_client(target) if "shm" in spec or "statistics" in spec else None
    shm: list[SharedMemoryWorker] = []
    try:
        if "shm" in spec:
            tensor = np.fromfile(spec["shm"]["tensor"], "<f4").reshape(spec["shm"]["input_shape"])
            for regions in spec["shm"]["regions"][:concurrency]:
                shm.append(SharedMemoryWorker(spec["shm"], regions, tensor))
                await shm[-1].register(client)
        return await _measure(call, payloads, shm, spec, timeout, server_pid, client)
    finally:
        for worker in shm:
            await worker.close(client)
        if client is not None:
            await client.close()


async def _measure(call: Any, payloads: list[bytes], shm: list[SharedMemoryWorker], spec: dict[str, Any],
                   timeout: float, server_pid: int | None, client: Any) -> dict[str, Any]:
    if shm:
        shm[0].write_input()
    first = await call(payloads[0], timeout=timeout)  # fails loudly when the target cannot answer at all
    if shm:
        shm[0].read_output()
    windows, window_s = int(spec["windows"]), float(spec["window_s"])
    begin = time.perf_counter() + float(spec["warmup_s"])
    end = begin + windows * window_s
    counts = [0] * windows
    latencies: list[list[float]] = [[] for _ in range(windows)]
    errors: collections.Counter[str] = collections.Counter()
    cpu = [asyncio.ensure_future(_cpu_at(begin, server_pid)), asyncio.ensure_future(_cpu_at(end, server_pid))]
    model = spec.get("statistics")
    stats = [asyncio.ensure_future(_statistics_at(t, client, model)) for t in (begin, end)] if model else []

    async def worker(i: int) -> None:
        payload = payloads[i]
        regions = shm[i] if shm else None
        while (started := time.perf_counter()) < end:
            try:
                if regions is not None:
                    regions.write_input()
                await call(payload, timeout=timeout)
                if regions is not None:
                    regions.read_output()
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

    await asyncio.gather(*(worker(i) for i in range(int(spec["concurrency"]))))
    (client0, server0), (client1, server1) = await asyncio.gather(*cpu)
    statistics: dict[str, Any] | None = None
    if stats:
        try:
            before, after = await asyncio.gather(*stats)
            statistics = {"before": before, "after": after}
        except Exception as e:  # e.g. UNIMPLEMENTED: a server without Triton's statistics extension
            statistics = {"error": f"{type(e).__name__}: {e}"[:500]}
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
        "request_bytes": len(payloads[0]), "response_bytes": len(first),
        "client_cpu_s": client1 - client0,
        "client_cpu_us_per_request": (client1 - client0) / len(every) * 1e6 if every else None,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_request": server_cpu / len(every) * 1e6 if every and server_cpu is not None else None,
        "server_statistics": statistics,
    }


async def main_async(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    limit = max(int(s["concurrency"]) for s in spec["scenarios"])
    async with grpc.aio.insecure_channel(spec["target"], options=OPTIONS) as channel, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:
        if any("method" in s for s in spec["scenarios"]):
            await asyncio.wait_for(channel.channel_ready(), 30)
        return [await scenario(channel, s, spec.get("server_pid"), session, spec["target"])
                for s in spec["scenarios"]]


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
