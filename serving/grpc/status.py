"""The one place where domain errors become gRPC status codes, and the decorator every RPC handler wears.

``STATUS_CODES`` maps each error kind to its code; ``status_for`` an exception to (code, message). ``rpc`` wraps a
servicer method: it assigns the request id, names the call's client for fair share (``share_var``), counts and times
the call, holds the call's place among its client address's connections (``serving.grpc.peers``) and its message's
bytes in the in-flight budget until the call is over (its answer sent: grpc keeps the request until then), maps any
exception and ends the RPC with it.
An unexpected exception is logged with its traceback and the request id (``serving.runtime.requests.error_of``),
and the client gets INTERNAL quoting that id. An inference call is traced when the trace settings say so
(``serving.runtime.tracing``: its ``traceparent`` metadata continued, ``traceresponse`` in its trailing metadata).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import grpc

from serving.errors import Kind
from serving.grpc.handlers import Held, RefusedRequest, StandIn
from serving.grpc.peers import PeerCalls
from serving.runtime import tracing
from serving.runtime.budget import Hold
from serving.runtime.fairshare import share_var
from serving.runtime.logs import new_request_id, request_id_var
from serving.runtime.requests import CANCELLED, OK, REQUEST_ID_KEY, Recorder, error_of, sane_request_id

STATUS_CODES: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Kind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,  # like gRPC's own "message larger than max"
    Kind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """(status code, message) for an exception raised while handling a request."""
    kind, message = error_of(exc, request_id)
    return STATUS_CODES[kind], message


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    """The client's ``x-request-id`` when it sent a sane one, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and (rid := sane_request_id(value)):
            return rid
    return new_request_id()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline in event-loop time (what the batcher compares with), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _trailers(rid: str, trace: tracing.RequestTrace | None) -> tuple[tuple[str, str], ...]:
    if trace is None:
        return ((REQUEST_ID_KEY, rid),)
    return (REQUEST_ID_KEY, rid), (tracing.TRACERESPONSE, trace.traceresponse)


def _fail(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, rid: str,
          trace: tracing.RequestTrace | None = None) -> None:
    """End the call with ``code``: set on the context and returned, not ``context.abort()``. Abort raises through
    the handler's frames, and grpc.aio then kept the request alive for a while: 4 MiB requests answered with abort
    held ~130 MiB of RSS more than the same requests answered this way (measured on grpcio 1.85)."""
    context.set_code(code)
    context.set_details(message)
    context.set_trailing_metadata(_trailers(rid, trace))


def _over(hold: Hold | None, peers: PeerCalls | None, peer: tuple[str, str] | None, _: object) -> None:
    """A call is over: its message's bytes back to the budget, its place among its address's connections freed."""
    if hold is not None:
        hold.release()
    if peers is not None and peer is not None:
        peers.leave(peer)


def rpc(method: str, model_of: Callable[[Any], str] = lambda request: "", *,
        stream: bool = False) -> Callable[..., Any]:
    """Decorate an async servicer method; the servicer has a ``recorder``, a ``plane``, ``identify`` (its calls'
    client, ``serving.grpc.clients``) and ``peers`` (a :class:`PeerCalls`, or None: no cap). A ``stream`` method writes
    its responses with ``context.write`` and records (and traces) each message itself: the call as a whole is not
    counted again."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        traced = method in tracing.TRACED

        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = request_id_from(context)
            token = request_id_var.set(rid)
            client = share_var.set(self.identify(context))  # a stream's messages inherit it
            recorder: Recorder = self.recorder
            gauge = recorder.inflight(method)
            if gauge is not None:
                gauge.inc()
            started, outcome = time.perf_counter(), OK
            trace, stream_token, peer, hold = None, None, None, None
            ran = False  # the method itself ran (a stream refused before it did is recorded here, as one call)
            if isinstance(request, Held):  # a unary call's message, counted in the budget until the call ends
                request, hold = request.message, request.hold
            peers: PeerCalls | None = self.peers
            try:
                if peers is not None:
                    peer = peers.enter(context.peer())
                if traced:  # the tracing-off cost of an inference call: this and one attribute check
                    tracer: tracing.Tracing = self.plane.tracing
                    if stream:
                        stream_token = tracing.enter_stream(tracer)
                    elif tracer.enabled and not isinstance(request, StandIn):
                        trace = tracer.begin(method, model_of(request), rid,
                                             tracing.carrier(context.invocation_metadata()),
                                             {"rpc.system": "grpc", "rpc.method": method})
                if isinstance(request, StandIn):
                    raise request.error()
                ran = True
                response = await fn(self, request, context, rid)
                context.set_trailing_metadata(_trailers(rid, trace))
                return response
            except asyncio.CancelledError:
                outcome = CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                kind, message = error_of(e, rid)
                outcome = kind.outcome
                if isinstance(request, RefusedRequest):
                    # Its bytes did not fit, and are counted nowhere: end the call with its status alone (trailers
                    # only). An answer with a message, even an empty one, waits for the client's flow-control
                    # window, and grpc keeps the request's bytes until it is sent: a client that reads nothing could
                    # pile them up. (Abort's cost, the handler's frames kept a while, is nothing here: no message.)
                    await context.abort(STATUS_CODES[kind], message, _trailers(rid, trace))
                _fail(context, STATUS_CODES[kind], message, rid, trace)
                return None
            finally:
                if hold is not None or peer is not None:
                    # Not now: grpc keeps the request message until the answer is sent, which a client that reads
                    # nothing can put off; the call's done callback runs once it is over, however it ends.
                    context.add_done_callback(functools.partial(_over, hold, peers, peer))
                if trace is not None:
                    self.plane.tracing.finish(trace, outcome)
                if stream_token is not None:
                    tracing.leave_stream(stream_token)
                if gauge is not None:
                    gauge.dec()
                if not stream or not ran:
                    model = "" if stream or isinstance(request, StandIn) else model_of(request)
                    recorder.done(method, recorder.model_label(model), outcome, time.perf_counter() - started)
                request_id_var.reset(token)
                share_var.reset(client)

        return handler

    return wrap
