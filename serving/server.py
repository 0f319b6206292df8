"""The composition root: one server process's parts, built and started in order, stopped gracefully.

``create_server(config)`` builds the metrics, the model registry, the data plane, the auth tokens and the budget of
request bytes in flight (``--max-inflight-mb``, one for both ports), then the two front ends over that one data
plane — gRPC (``serving.grpc``) and HTTP (``serving.http``), peers that never import each other — and binds the gRPC
port (0: any free one) without starting. ``start()`` opens the ports with every
model NOT_SERVING, then loads the models in the background: each turns SERVING (health, ready) only after its golden
self-check. After loading, the repository is looked at again every ``poll_s`` seconds (``--poll-s``; 0: never) and
whenever ``reload()`` is called (SIGHUP in ``serve``): new models and newer versions load without a restart. That is
``--model-control poll``; under ``explicit`` models load and unload only on request (the repository extension,
``python -m serving models``), under ``none`` never after start; SIGHUP still rereads the token file.
``stop(grace)`` turns health NOT_SERVING, refuses new requests on both ports, lets those in flight finish for up to
``grace`` seconds, then stops the batchers. ``serve(config)`` runs until SIGTERM/SIGINT; it is what
``python -m serving serve`` calls. The tracer (``tracing``: OpenTelemetry, exported to ``--trace-endpoint``) and the
process's log settings are the data plane's, so that both front ends read and change the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from serving.config import ServerConfig
from serving.grpc.frontend import GrpcFrontEnd
from serving.http.app import HttpFrontEnd
from serving.runtime.auth import Tokens
from serving.runtime.budget import InflightBudget
from serving.runtime.dataplane import DataPlane
from serving.runtime.logs import log_settings
from serving.runtime.loop_lag import LoopLag
from serving.runtime.metrics import Metrics
from serving.runtime.registry import ModelRegistry
from serving.runtime.requests import Recorder
from serving.runtime.tracing import Tracing

log = logging.getLogger("serving.server")


class InferenceServer:
    """One server instance: model registry and data plane, the gRPC and HTTP front ends, metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.loop_lag = LoopLag(self.metrics.loop_lag, self.metrics.loop_lag_max, self.metrics.loop_step_cpu)
        self.registry = ModelRegistry(config, self.metrics)
        self.tracing = Tracing(config)  # add_span_processor() sends spans elsewhere too (tests: in memory)
        self.plane = DataPlane(self.registry, tracing=self.tracing, logs=log_settings())
        self.tokens = Tokens(config.auth_token_file) if config.auth_token_file else None
        self.budget = InflightBudget.for_config(config)
        self.budget.publish(self.metrics.inflight_bytes)
        self.metrics.inflight_bytes_limit.set(self.budget.limit)
        # One recorder for both front ends: the same metric children, and one log rate limit for the process.
        recorder = Recorder(self.metrics, lambda: self.registry.models)
        self.grpc = GrpcFrontEnd(self.plane, config, recorder, self.tokens, budget=self.budget)
        self.http = (HttpFrontEnd(self.plane, config, recorder, self.tokens, budget=self.budget)
                     if config.http_port is not None else None)
        self.port = self.grpc.port
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._rescan = asyncio.Event()
        self._stopped = asyncio.Event()

    async def start(self, load_models: bool = True) -> None:
        """Open the ports (everything NOT_SERVING), then load the models in the background unless told not to."""
        if self.config.metrics_port is not None:  # first: a taken metrics port fails before gRPC is up
            host = self.config.metrics_host or self.config.host
            self.metrics_port = self.metrics.serve(self.config.metrics_port, host)
        if self.http is not None:
            try:
                self.http_port = await self.http.start()
            except OSError:
                self.metrics.close()
                raise
        await self.grpc.start()
        self.loop_lag.start()
        log.info("listening on %s: gRPC %d, HTTP %s (%s), metrics %s%s, %g MiB of requests in flight at most; "
                 "loading %s", self.config.host, self.port,
                 self.http_port or "-", "TLS" if self.config.tls_cert else "plaintext", self.metrics_port or "-",
                 f", {len(self.tokens)} auth tokens" if self.tokens else "", self.budget.limit_mb,
                 ", ".join(f"{m.name}:{m.version}" for m in self.registry.models.values()),
                 extra={"port": self.port, "http_port": self.http_port, "metrics_port": self.metrics_port})
        if load_models:
            self.load()

    def load(self) -> asyncio.Task[None]:
        """Start loading and self-checking the models (once); each turns SERVING when it passes."""
        if self._load_task is None:
            self._load_task = asyncio.get_running_loop().create_task(self._load())
        return self._load_task

    async def _load(self) -> None:
        await self.registry.load_all()
        states = {m.name: m.state.value for m in self.registry.models.values()}
        log.info("models loaded: %s; server %s", states, "SERVING" if self.registry.ready else "NOT_SERVING",
                 extra={"models": states})
        if not self.registry.shutting_down and self.config.model_control == "poll":
            self._poll_task = asyncio.get_running_loop().create_task(self._poll(), name="repository-poll")

    def reload(self) -> None:
        """Look at the repository again now (new models, newer versions; ``--model-control poll`` only) and reread
        the token file; safe to call from a signal handler."""
        self._rescan.set()
        if self.tokens is not None:
            self.tokens.reload()

    async def _poll(self) -> None:
        """Rescan every ``poll_s`` seconds and on ``reload()``, until stopped; a failing rescan is logged only."""
        period = self.config.poll_s or None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescan.wait(), period)
            self._rescan.clear()
            try:
                await self.registry.rescan()
            except Exception:
                log.exception("repository rescan failed")

    async def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Wait for model loading to finish; returns whether the server is ready (SERVING)."""
        if self._load_task is None:
            raise RuntimeError("the models are not loading: start() the server, or call load()")
        await asyncio.wait_for(asyncio.shield(self._load_task), timeout)
        return self.registry.ready

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new requests, finish in-flight ones for up to ``grace`` seconds (default: config), release all."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        log.info("shutting down (grace %.1f s)", grace)
        self.registry.shutting_down = True
        await self.grpc.drain()
        for task in (self._load_task, self._poll_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(self.grpc.stop(grace), *([self.http.stop(grace)] if self.http else []))
        await self.registry.close()
        self.plane.close()
        await self.tracing.shutdown()
        await self.loop_lag.stop()
        self.metrics.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def create_server(config: ServerConfig) -> tuple[InferenceServer, int]:
    """Build a server bound to ``config.port`` (0: a free port); call from the event loop that will run it."""
    server = InferenceServer(config)
    return server, server.port


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully; returns the process exit code."""
    server, _ = create_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
        await stop.wait()
    finally:
        await server.stop()
    return 0
