"""Servers for the tests, and waiting for them without sleeping blind.

- :class:`ServerThread`: a real server on its own event loop in a background thread (tests can reach inside it);
- :class:`ServerProcess`: ``python -m serving serve`` in a subprocess, so that a crash is a dead process and its
  memory the kernel's figure; its JSON log lines are collected as they come;
- :func:`wait_until`: polling with a deadline, for conditions that offer no event to wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.config import ServerConfig
from serving.runtime.registry import ServedModel
from serving.server import InferenceServer, create_server
from tests.support.paths import ROOT
from tests.support.processes import rss_kb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LogEntry = dict[str, Any]


# ---- waiting -------------------------------------------------------------------------------------------------------

def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Check ``condition`` every ``interval`` seconds until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)  # the polling interval: the one sleep behind every wait on a condition without an event
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. ``AssertionError`` naming ``what`` after
    ``timeout`` seconds. For conditions with no event to wait on: a file growing, a process ending, a counter."""
    started = time.perf_counter()
    assert poll(condition, timeout, interval), f"timed out after {timeout} s waiting for {what}"
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- requests and metrics ------------------------------------------------------------------------------------------

def classify_request(payload: bytes, model: str = "digits", top_k: int = 3) -> ic_pb2.ClassifyRequest:
    return ic_pb2.ClassifyRequest(model=model, top_k=top_k, images=[ic_pb2.Image(encoded=payload)])


def call(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    """(code, details, response) of one blocking RPC, errors included."""
    try:
        return grpc.StatusCode.OK, "", fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None  # type: ignore[attr-defined]


def scrape(server: ServerThread | ServerProcess) -> dict[tuple[str, tuple], float]:
    """The server's /metrics page over HTTP, as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(server: ServerThread | ServerProcess, name: str, default: float | None = None, **labels: str) -> float:
    """One sample of the /metrics page: ``sample(server, "serving_queue_depth", model="digits")``."""
    value = scrape(server).get((name, tuple(sorted(labels.items()))), default)
    if value is None:
        raise KeyError(f"{name}{labels} is not on the /metrics page")
    return value


def total(server: ServerThread | ServerProcess, name: str) -> float:
    """The sum of a metric over all its labels."""
    return sum(v for (n, _), v in scrape(server).items() if n == name)


# ---- a server in a thread ------------------------------------------------------------------------------------------

def base_config(repository: Path, **kwargs: Any) -> ServerConfig:
    """Loopback, free ports, one compute thread: what every in-process test server starts from. ``SERVING_INSTANCES``
    (the serve CLI's variable, which server processes read too) sets the model instances."""
    instances = os.environ.get("SERVING_INSTANCES")
    config = ServerConfig(repository=repository, host="127.0.0.1", port=0, metrics_port=0, http_port=0, threads=1,
                          decode_workers=2, max_batch=8, grace_s=2.0, instances=int(instances or 1))
    return replace(config, **kwargs)


class ServerThread:
    """A real server on its own event loop in a background thread; tests talk to it over loopback."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self.thread.start()
        self.server: InferenceServer = self.call(self._create())
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the HTTP front end (known once started)."""
        return f"http://127.0.0.1:{self.server.http_port}"

    async def _create(self) -> InferenceServer:
        return create_server(self.config)[0]

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, load: bool = True) -> ServerThread:
        self.call(self.server.start(load_models=load))
        if load:
            self.call(self.server.wait_until_loaded(60))
        return self

    def load(self) -> bool:
        """Load the models of a server started with ``load=False``; returns whether it is SERVING."""

        async def load_and_wait() -> bool:
            self.server.load()
            return await self.server.wait_until_loaded(60)

        return self.call(load_and_wait())

    def model(self, name: str) -> ServedModel:
        return self.server.registry.models[name]

    @contextlib.contextmanager
    def hold_compute(self, name: str) -> Iterator[threading.Event]:
        """Block every compute thread of ``name`` (one per instance) while the block runs (or until the yielded event
        is set): requests it accepted stay in progress, later ones wait in its queue — for as long as the test wants,
        not a window."""
        gate = threading.Event()
        batcher = self.model(name).batcher
        assert batcher is not None
        for instance in batcher.instances:
            instance.executor.submit(gate.wait, 60)
        try:
            yield gate
        finally:
            gate.set()

    @contextlib.contextmanager
    def held_batch(self, name: str, send: Callable[[], grpc.Future]) -> Iterator[grpc.Future]:
        """``send()`` (an RPC future) taken into a batch of ``name`` that waits for its held compute thread while the
        block runs: requests sent meanwhile wait in the queue. With several instances each gets such a batch (one
        ``send()`` each: the batch-size metrics count them all). Yields the first future."""
        batcher = self.model(name).batcher
        assert batcher is not None
        with self.hold_compute(name):
            futures = []
            for _ in batcher.instances:
                futures.append(send())
                wait_until(lambda: sum(len(i.running) for i in batcher.instances) == len(futures), 10,
                           "the request in the held batch")
            yield futures[0]
        for future in futures[1:]:
            future.exception()  # answered too: nothing left running once the block ends

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def close(self, grace: float = 1.0) -> None:
        """Stop the server (``grace`` seconds for requests in flight) and its loop; again: nothing."""
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# ---- a server process ----------------------------------------------------------------------------------------------

# Small and quiet: one compute and one decoding thread (two shared cores), JSON log lines to parse.
SMALL = ("--threads", "1", "--decode-workers", "1", "--log-format", "json")


class ServerProcess:
    """``python -m serving serve`` (or ``launcher … serve``) on 127.0.0.1 in a subprocess.

    ``settings`` come before ``args`` on the command line (the last of a repeated flag wins), ``env`` adds to this
    process's environment. The constructor returns once the server listens (and, with ``wait_ready``, once its models
    are loaded), both read from its log.
    """

    def __init__(self, repository: Path, *args: str, port: int = 0, launcher: list[str] | None = None,
                 env: dict[str, str] | None = None, settings: tuple[str, ...] = SMALL,
                 wait_ready: bool = True) -> None:
        command = [*(launcher or [sys.executable, "-m", "serving"]), "serve", "--repository", str(repository),
                   "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--http-port", "0",
                   *settings, *args]
        self.proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self.log: list[LogEntry] = []
        self._changed = threading.Condition(threading.RLock())  # notified on every log line and at the end
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_log(lambda e: "port" in e and "metrics_port" in e, 60)
        self.port = int(listening["port"])
        self.metrics_port = int(listening["metrics_port"])
        self.http_port = listening.get("http_port")
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                    ("grpc.max_send_message_length", 64 << 20)])
        self.classifier = ic_grpc.ImageClassifierStub(self.channel)
        self.inference = kserve_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if wait_ready:
            self.wait_log(lambda e: str(e.get("msg", "")).startswith("models loaded"), 60)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"msg": line.rstrip("\n"), "level": "raw"}
            with self._changed:
                self.log.append(entry)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def entries(self, predicate: Callable[[LogEntry], bool] = lambda e: True) -> list[LogEntry]:
        with self._changed:
            return [e for e in self.log if predicate(e)]

    def wait_log(self, predicate: Callable[[LogEntry], bool], timeout: float) -> LogEntry:
        """The first log entry matching ``predicate``, waiting up to ``timeout`` seconds for the line to come."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                for entry in self.log[checked:]:
                    if predicate(entry):
                        return entry
                checked = len(self.log)
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    break
                self._changed.wait(remaining)
        raise AssertionError(f"no matching log entry; exit code {self.proc.poll()}; last: {self.entries()[-5:]}")

    def status(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, service: str = "", timeout: float = 30) -> float:
        """Seconds until ``service`` reports SERVING, watched through grpc.health.v1 Watch (pushed, not polled)."""
        started = time.perf_counter()
        watch = self.health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                                  wait_for_ready=True)
        try:
            for response in watch:
                if response.status == SERVING:
                    return time.perf_counter() - started
        except grpc.RpcError as e:
            raise AssertionError(f"{service or 'server'} never became SERVING: {e.code().name}") from None
        finally:
            watch.cancel()
        raise AssertionError(f"{service or 'server'}: the health watch ended before SERVING")

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit code once the whole log is read."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(10)
        self._reader.join(5)
        return code
