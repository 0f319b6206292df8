"""What every request carries whatever its transport: its id, its error's kind and message, and its record.

- The request id is the client's (``x-request-id`` header or metadata, or the message's own id field) when it is
  safe to log and echo, else a new one; it is returned with the answer and quoted in internal errors.
- :func:`error_of` turns any exception into (kind, message): a domain error keeps its message (cut to fit a gRPC
  trailer); anything else is logged with its traceback and answered "internal error (request id …)", never with
  the exception's text, which may hold internals. Each front end maps the kind to its own status.
- :class:`Recorder` counts, times and logs each finished request under its outcome (``Kind.outcome``, "OK" or
  "CANCELLED"), the same names for both transports, and counts it for its client (``client_var``: a token's client,
  or ``anonymous``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any

from serving.errors import Kind, ServingError
from serving.runtime.auth import client_var
from serving.runtime.logs import RateLimit, request_id_var
from serving.runtime.metrics import Metrics

log = logging.getLogger("serving.rpc")

SERVER_NAME = "resnet-serving"
try:
    SERVER_VERSION = dist_version(SERVER_NAME)
except PackageNotFoundError:
    SERVER_VERSION = "0.0.0"

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
OK, CANCELLED = "OK", "CANCELLED"
LOG_LINES_PER_SECOND = 20  # per (method, outcome): a flood of bad requests must not flood the log
# Error messages travel in gRPC trailers, which clients cap at 16 KiB; a message quoting client data (a field name,
# a decoder's complaint) is cut well below that, or the client would see a transport error instead of the status.
MAX_MESSAGE_CHARS = 2000


def sane_request_id(value: object) -> str | None:
    """A client-chosen request id (header or message field) if it is safe to log and echo: 1–128 printable ASCII."""
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable():
        return value
    return None


def error_of(exc: BaseException, request_id: str = "") -> tuple[Kind, str]:
    """(kind, message) for an exception raised while handling a request; unexpected ones are logged here."""
    if isinstance(exc, ServingError):
        message = str(exc)
        return exc.kind, message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"
    log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return Kind.INTERNAL, f"internal error (request id {request_id or request_id_var.get()})"


class Recorder:
    """Counts, times and logs finished requests; children of labelled metrics are cached (the hot path)."""

    def __init__(self, metrics: Metrics | None, known_models: Callable[[], Any]) -> None:
        self.metrics = metrics
        self.known_models = known_models
        self._children: dict[tuple[str, ...], Any] = {}
        self._log_limit = RateLimit(LOG_LINES_PER_SECOND)

    def model_label(self, name: str) -> str:
        # Only names of real models become label values: clients must not be able to grow the metric set.
        return name if name in self.known_models() else ""

    def inflight(self, method: str) -> Any:
        if self.metrics is None:
            return None
        key = ("inflight", method)
        if key not in self._children:
            self._children[key] = self.metrics.inflight.labels(method)
        return self._children[key]

    def done(self, method: str, model: str, outcome: str, seconds: float) -> None:
        """One finished request: ``outcome`` is OK, CANCELLED or a ``Kind.outcome``."""
        if self.metrics is not None:
            key = (method, model, outcome)
            counter = self._children.get(key)
            if counter is None:
                counter = self._children[key] = self.metrics.requests.labels(model, method, outcome)
                self._children[(method, model)] = self.metrics.request_seconds.labels(model, method)
            counter.inc()
            self._children[(method, model)].observe(seconds)
            key = ("client", client_var.get(), outcome)
            counter = self._children.get(key)
            if counter is None:
                counter = self._children[key] = self.metrics.client_requests.labels(key[1], outcome)
            counter.inc()
        level = logging.DEBUG if outcome == OK else (logging.ERROR if outcome == Kind.INTERNAL.outcome
                                                     else logging.INFO)
        if log.isEnabledFor(level) and (skipped := self._log_limit.allow((method, outcome))) is not None:
            log.log(level, "%s %s", method, outcome,
                    extra={"method": method, "model": model, "code": outcome, "ms": round(seconds * 1e3, 3),
                           **({"similar_lines_skipped": skipped} if skipped else {})})
