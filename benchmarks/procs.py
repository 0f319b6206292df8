"""Subprocesses of a benchmark run: the real server (``python -m serving serve``), the echo ceiling, the load
generator. Every one is bounded in time and stopped by its own process id; nothing outlives the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.core import Context

READY_TIMEOUT_S = 60.0
# The health probe must notice the port opening within milliseconds: gRPC's default reconnect backoff (1 s, then
# growing) would otherwise add up to a second to every cold-start measurement.
PROBE_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
                 ("grpc.max_reconnect_backoff_ms", 20)]


def child_env(ctx: Context) -> dict[str, str]:
    """The environment of every child: thread counts pinned, the checkout importable."""
    env = dict(os.environ)
    threads = str(ctx.threads)
    env.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ctx.root), env.get("PYTHONPATH", "")])))
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; this process only."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a live process, in MB (10^6 bytes)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024 / 1e6
    return found


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: Path
    ready_s: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def memory(self) -> dict[str, float]:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        stop(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_serving(address: str, proc: subprocess.Popen, log: Path, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once ``grpc.health.v1`` says SERVING for the whole server; raise if the process dies or times out."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, port = address.rsplit(":", 1)
    deadline = time.perf_counter() + timeout
    while True:  # the TCP port first (cheap), then the health service
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before SERVING:\n{_tail(log)}")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            break
        except OSError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"server port {address} not open after {timeout:.0f} s:\n{_tail(log)}") from None
            time.sleep(0.002)
    with grpc.insecure_channel(address, options=PROBE_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before SERVING:\n{_tail(log)}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout:.0f} s:\n{_tail(log)}")
            time.sleep(0.002)


def start_server(ctx: Context, repository: Path, models: Sequence[str], *, max_batch: int = 32,
                 extra: Sequence[str] = (), tag: str = "server") -> ServerProcess:
    """``python -m serving serve`` on a free loopback port, returned once SERVING (``ready_s``: from spawn)."""
    port = free_port()
    log = ctx.work / "logs" / f"{tag}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "serving", "serve", "--repository", str(repository), "--models", *models,
           "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--http-port", "-1",
           "--threads", str(ctx.threads),
           "--max-batch", str(max_batch), "--grace-s", "1", *extra]
    with open(log, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ctx.root, env=child_env(ctx), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_serving(f"127.0.0.1:{port}", proc, log)
    except BaseException:
        stop(proc)
        raise
    return ServerProcess(proc, port, log, time.perf_counter() - started)


@dataclass
class EchoProcess:
    proc: subprocess.Popen
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def memory(self) -> dict[str, float]:
        return rss_mb(self.proc.pid)

    def __enter__(self) -> EchoProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def start_echo(ctx: Context, responses: dict[str, Path]) -> EchoProcess:
    """The bare grpc.aio echo server (``benchmarks.echo``), answering each method with its canned response."""
    cmd = [sys.executable, "-m", "benchmarks.echo", *(f"{m}={p}" for m, p in responses.items())]
    proc = subprocess.Popen(cmd, cwd=ctx.root, env=child_env(ctx), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out: IO[bytes] = proc.stdout  # type: ignore[assignment]
    line = out.readline().decode().strip()  # the port, once listening
    if not line.isdigit():
        stop(proc)
        raise RuntimeError(f"echo server did not start: {line!r} {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return EchoProcess(proc, int(line))


def run_loadgen(ctx: Context, target: str, scenarios: list[dict[str, Any]],
                server_pid: int | None = None) -> list[dict[str, Any]]:
    """Run the scenarios, one after the other, from a separate load-generator process (which also reads the CPU
    time of ``server_pid`` around each measurement)."""
    spec = ctx.work / "loadgen" / f"spec-{time.time_ns()}.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"target": target, "scenarios": scenarios, "server_pid": server_pid}))
    budget = sum(s["warmup_s"] + s["windows"] * s["window_s"] + 2 * s.get("timeout_s", 30) for s in scenarios) + 30
    done = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", str(spec)], cwd=ctx.root, env=child_env(ctx),
                          capture_output=True, timeout=budget, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout)
