"""The one place where domain errors become gRPC status codes, and the decorator every RPC handler wears.

``status_for`` maps an exception to (code, message); ``rpc`` wraps a servicer method: it assigns the request id,
counts and times the call, maps any exception through ``status_for`` and ends the RPC with it. An unexpected
exception is logged with its traceback and the request id, and the client gets INTERNAL quoting that id (never
the exception text, which may hold internals).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from serving.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelRejected,
    NotReady,
    Overloaded,
    TooLarge,
)
from serving.runtime.logs import new_request_id, request_id_var
from serving.runtime.metrics import Metrics

log = logging.getLogger("serving.rpc")

REQUEST_ID_KEY = "x-request-id"
STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    ModelRejected: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,  # like gRPC's own "message larger than max"
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


# Status messages travel in trailers, which clients cap at 16 KiB; a message quoting client data (a field name, a
# decoder's complaint) is cut well below that, or the client would see a transport error instead of the status.
MAX_MESSAGE_CHARS = 2000


def status_for(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """(status code, message) for an exception raised while handling a request."""
    for cls, code in STATUS_CODES.items():
        if isinstance(exc, cls):
            message = str(exc)
            return code, message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"
    log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id or request_id_var.get()})"


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    """The client's ``x-request-id`` when it sent a sane one, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return new_request_id()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline in event-loop time (what the batcher compares with), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class _Recorder:
    """Counts, times and logs finished calls; children of labelled metrics are cached (the hot path)."""

    def __init__(self, metrics: Metrics | None, known_models: Callable[[], Any]) -> None:
        self.metrics = metrics
        self.known_models = known_models
        self._children: dict[tuple[str, ...], Any] = {}

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

    def done(self, method: str, model: str, code: grpc.StatusCode, seconds: float) -> None:
        if self.metrics is not None:
            key = (method, model, code.name)
            counter = self._children.get(key)
            if counter is None:
                counter = self._children[key] = self.metrics.requests.labels(model, method, code.name)
                self._children[(method, model)] = self.metrics.request_seconds.labels(model, method)
            counter.inc()
            self._children[(method, model)].observe(seconds)
        level = logging.DEBUG if code is grpc.StatusCode.OK else (
            logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO)
        if log.isEnabledFor(level):
            log.log(level, "%s %s", method, code.name,
                    extra={"method": method, "model": model, "code": code.name, "ms": round(seconds * 1e3, 3)})


def _fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, rid: str) -> None:
    """End the call with ``code``: set on the context and returned, not ``context.abort()``. Abort raises through
    the handler's frames, and grpc.aio then kept the request alive for a while: 4 MiB requests answered with abort
    held ~130 MiB of RSS more than the same requests answered this way (measured on grpcio 1.85)."""
    context.set_code(code)
    context.set_details(message)
    context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))


def rpc(method: str, model_of: Callable[[Any], str] = lambda request: "") -> Callable[..., Any]:
    """Decorate an async servicer method (unary or server-streaming). The servicer has a ``recorder``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def stream_handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                rid = request_id_from(context)
                token = request_id_var.set(rid)
                try:
                    async for response in _guard_stream(fn(self, request, context, rid), self.recorder, method,
                                                        context, rid):
                        yield response
                finally:
                    request_id_var.reset(token)

            return stream_handler

        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = request_id_from(context)
            token = request_id_var.set(rid)
            recorder: _Recorder = self.recorder
            gauge = recorder.inflight(method)
            if gauge is not None:
                gauge.inc()
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                response = await fn(self, request, context, rid)
                context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                code, message = status_for(e, rid)
                _fail(context, code, message, rid)
                return None
            finally:
                if gauge is not None:
                    gauge.dec()
                recorder.done(method, recorder.model_label(model_of(request)), code, time.perf_counter() - started)
                request_id_var.reset(token)

        return handler

    return wrap


async def _guard_stream(responses: AsyncIterator[Any], recorder: _Recorder, method: str,
                        context: grpc.aio.ServicerContext, rid: str) -> AsyncIterator[Any]:
    """Stream-level failures (not per-message ones, which the stream answers itself) end the RPC with a status."""
    gauge = recorder.inflight(method)
    if gauge is not None:
        gauge.inc()
    try:
        async for response in responses:
            yield response
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as e:
        code, message = status_for(e, rid)
        _fail(context, code, message, rid)
    finally:
        if gauge is not None:
            gauge.dec()
