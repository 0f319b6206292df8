"""Prometheus metrics of one server, in its own registry (several servers can live in one test process).

Exposed over HTTP ``/metrics`` on ``--metrics-port`` (Triton's default, 8002). Names:

- ``serving_requests_total{model, method, code}`` — finished RPCs (one per stream message for streams);
- ``serving_request_duration_seconds{model, method}`` — handler time, decode + queue + compute + encode;
- ``serving_queue_duration_seconds{model}`` — per successful inference request, its time in the batcher's queue
  (all its batches: a request of more than ``--max-batch`` images joins several);
- ``serving_compute_duration_seconds{model}`` — one onnxruntime call (one batch), timed in its compute thread;
- ``serving_batch_size{model}`` — images per onnxruntime call;
- ``serving_inflight_requests{method}`` — requests being handled now (gRPC methods, and ``http.*`` operations);
- ``serving_queue_depth{model}`` — requests waiting in the batcher;
- ``serving_inflight_request_bytes{transport}`` — request bytes held against ``--max-inflight-mb`` (declared HTTP
  bodies, received gRPC messages), and ``serving_inflight_request_bytes_limit``, that limit;
- ``serving_dropped_requests_total{model, reason}`` — queued requests never computed (cancelled, deadline);
- ``serving_model_ready{model, version}`` — 1 once the model passed its golden self-check, else 0;
- ``serving_event_loop_lag_seconds``, ``serving_event_loop_lag_max_seconds`` — how late the event loop that both
  front ends share ran a 10 ms timer; ``serving_event_loop_step_cpu_seconds`` — the loop thread's CPU time in each
  such window: a step of the server's own code when it is near the lag (``serving.runtime.loop_lag``).
- ``serving_client_requests_total{client, code}`` — finished requests per client, as ``serving_requests_total``
  counts them;
- ``serving_client_admitted_images{client}`` — images admitted and not finished (decoding, queued, computing) per
  client, all models together: what its fair share is counted in (``serving.runtime.fairshare``).

``client`` is the token's client name (or its ``token:…`` identity) with ``--auth-token-file``, else ``anonymous``:
the label set is bounded by the token file, and never holds a token or a client's address.

The queue, compute and batch-size histograms are observed by the calls that count Triton's statistics
(``serving.runtime.statistics``), with the same numbers: they agree with ``ModelStatistics`` summed over versions.
``serving_requests_total`` counts calls at the transport, so it also counts what never reached a model version (a
bad token, a malformed message, an unknown model or version) and the calls that are not inference; restricted to the
inference methods of one model and to requests that reached it, its OK count is ``success.count`` and the rest
``fail.count``.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from serving.runtime import loop_lag

MAX_SCRAPERS = 16        # connections served at once; more are closed at once (Prometheus needs one)
SOCKET_TIMEOUT_S = 5.0   # a connection that sends or reads nothing this long is dropped

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("serving_requests", "Finished RPCs by model, method and status code",
                                ("model", "method", "code"), registry=r)
        self.request_seconds = Histogram("serving_request_duration_seconds", "RPC handling time",
                                         ("model", "method"), buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("serving_queue_duration_seconds",
                                       "Time a successful request waited in the batch queue",
                                       ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("serving_compute_duration_seconds", "onnxruntime time per batch",
                                         ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("serving_batch_size", "Images per onnxruntime call", ("model",),
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge("serving_inflight_requests", "Requests being handled", ("method",), registry=r)
        self.dropped = Counter("serving_dropped_requests", "Queued requests dropped before computing, by reason "
                               "(cancelled, deadline)", ("model", "reason"), registry=r)
        self.queue_depth = Gauge("serving_queue_depth", "Requests waiting in the batch queue", ("model",), registry=r)
        self.model_ready = Gauge("serving_model_ready", "1 when the model serves", ("model", "version"), registry=r)
        self.loop_lag = Histogram("serving_event_loop_lag_seconds", "How late the event loop ran a 10 ms timer: the "
                                  "step that held it", buckets=loop_lag.BUCKETS, registry=r)
        self.loop_lag_max = Gauge("serving_event_loop_lag_max_seconds", "The longest event-loop lag since the start",
                                  registry=r)
        self.loop_step_cpu = Histogram("serving_event_loop_step_cpu_seconds", "The event loop thread's CPU time in "
                                       "each 10 ms timer's window: a step of the server's code",
                                       buckets=loop_lag.BUCKETS, registry=r)
        self.inflight_bytes = Gauge("serving_inflight_request_bytes", "Request bytes held against --max-inflight-mb",
                                    ("transport",), registry=r)
        self.inflight_bytes_limit = Gauge("serving_inflight_request_bytes_limit", "--max-inflight-mb, in bytes",
                                          registry=r)
        self.client_requests = Counter("serving_client_requests", "Finished requests by client (token name; "
                                       "'anonymous' without tokens) and status code", ("client", "code"), registry=r)
        self.client_images = Gauge("serving_client_admitted_images", "Images admitted and not finished, by client",
                                   ("client",), registry=r)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the ``/metrics`` HTTP endpoint in a daemon thread; returns the bound port (``port=0``: any)."""
        try:
            self._http = _MetricsServer((host, port), _QuietHandler)
        except OSError as e:
            raise OSError(f"cannot bind the metrics port {host}:{port}: {e.strerror or e}") from None
        self._http.set_app(make_wsgi_app(self.registry))
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _QuietHandler(WSGIRequestHandler):
    timeout = SOCKET_TIMEOUT_S  # socket timeout per connection: half-open or slow clients cannot hold a thread

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per scrape on stderr is noise; the server's own log says where metrics are served


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``MAX_SCRAPERS`` at once: one more is closed without an answer."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(MAX_SCRAPERS)
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        pass  # a timed-out or reset scraper connection is the client's problem, not a traceback in our log

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
