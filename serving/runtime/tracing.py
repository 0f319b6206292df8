"""Request tracing with OpenTelemetry, driven by Triton's trace settings (the trace extension).

A traced request gets one root span (kind SERVER; it continues the client's W3C ``traceparent`` when there is one)
and a child span per step: ``admission``, ``decode``, ``queue`` (waiting for a batch), ``compute`` (the onnxruntime
call of the batch it ran in; ``serving.batch.images`` and ``serving.batch.requests`` say what else was in it) and
``response`` (from the end of the compute to the answer built). The steps only record monotonic timestamps while
the request runs; the child spans are made when it ends, with those times, so a step costs two clock reads and the
batcher's threads never touch OpenTelemetry. A request that is not traced costs one attribute check in the front
end and a ``ContextVar`` lookup per step.

Settings, Triton's names, each global or for one model (a model's own value wins; cleared, it follows the global
one again; a cleared global value returns to the server's start value, from ``--trace-*``):

- ``trace_level``: ``OFF`` or ``TIMESTAMPS``; ``TENSORS`` is refused (spans carry timings, never tensor contents);
- ``trace_rate``: one request in N is traced (0: only those whose client sampled them);
- ``trace_count``: how many more traces to take (-1: no limit); reading it gives what is left;
- ``log_frequency``: export after every N traces (0: the exporter's own schedule, and at shutdown);
- ``trace_file``: refused unless empty (no path named by a client is written); ``trace_mode``: ``opentelemetry``.

A request whose ``traceparent`` says "sampled" is traced whatever ``trace_rate`` says (the client decided, as with
OpenTelemetry's parent-based sampling and Triton's context propagation); one that says "not sampled" is not traced.
``trace_count`` caps both kinds. Traced answers carry ``traceresponse`` (W3C Trace Context Level 2): the trace id
and the id of the server's root span.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as otel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving.config import ServerConfig
from serving.errors import InvalidInput, ServingError
from serving.runtime.requests import SERVER_NAME, SERVER_VERSION

log = logging.getLogger(__name__)

# The operations traced: inference, whichever API and transport carried it (health and metadata calls are not).
TRACED = frozenset({"ModelInfer", "ModelStreamInfer", "Classify", "ClassifyStream", "Explain"})
TRACERESPONSE = "traceresponse"
LEVELS = ("OFF", "TIMESTAMPS")
MODE = "opentelemetry"
SETTINGS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
# At shutdown the spans left are exported for this long at most; then the exporter stops retrying (a collector that
# cannot be reached held SIGTERM for the exporter's whole 10 s timeout).
EXPORT_AT_EXIT_S = 3.0

_PROPAGATOR = TraceContextTextMapPropagator()
# Span times are epoch nanoseconds; steps are timed with the monotonic clock (the batcher's ``perf_counter_ns``) and
# shifted by this offset, so that the spans of one request are consistent with each other whatever NTP does.
_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def now_ns() -> int:
    return time.perf_counter_ns() + _OFFSET_NS


def _ns(perf_counter_ns: int) -> int:
    return perf_counter_ns + _OFFSET_NS


# ---- one traced request -------------------------------------------------------------------------------------------

class RequestTrace:
    """What one traced request recorded: its root span (open until ``Tracing.finish``) and its steps' times."""

    __slots__ = ("compute_end", "span", "steps", "token", "traceresponse")

    def __init__(self, span: otel.Span) -> None:
        self.span = span
        # (name, start ns, end ns, error, attributes)
        self.steps: list[tuple[str, int, int, BaseException | None, dict[str, Any] | None]] = []
        self.compute_end = 0
        self.token: Token[RequestTrace | None] | None = None
        c = span.get_span_context()
        self.traceresponse = f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"

    def batched(self, enqueued: int, started: int, finished: int, images: int, requests: int) -> None:
        """Its tensor waited in the queue from ``enqueued`` and was computed from ``started`` to ``finished``
        (``time.perf_counter_ns``) in a batch of ``images`` images from ``requests`` requests."""
        self.steps.append(("queue", _ns(enqueued), _ns(started), None, None))
        end = _ns(finished)
        self.steps.append(("compute", _ns(started), end, None,
                           {"serving.batch.images": images, "serving.batch.requests": requests}))
        self.compute_end = end


_current: ContextVar[RequestTrace | None] = ContextVar("request_trace", default=None)
# Set by a traced stream's handler: the stream's messages are traced one by one (``begin_message``).
_stream: ContextVar[Tracing | None] = ContextVar("stream_tracing", default=None)


def current() -> RequestTrace | None:
    """The trace of the request being handled, if it is traced."""
    return _current.get()


class _Step:
    __slots__ = ("attributes", "name", "start", "trace")

    def __init__(self, trace: RequestTrace, name: str) -> None:
        self.trace, self.name, self.attributes = trace, name, None
        self.start = 0

    def __enter__(self) -> _Step:
        self.start = now_ns()
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self.trace.steps.append((self.name, self.start, now_ns(), error, self.attributes))

    def note(self, key: str, value: str | int) -> None:
        """An attribute of the request (its root span): what only this step learns, such as the served version."""
        self.trace.span.set_attribute(key, value)


class _NoStep:
    __slots__ = ()

    def __enter__(self) -> _NoStep:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        return None

    def note(self, key: str, value: str | int) -> None:
        return None


_NO_STEP = _NoStep()


def step(name: str) -> _Step | _NoStep:
    """``with tracing.step("decode"):`` times a step of the current request, if it is traced (else does nothing)."""
    trace = _current.get()
    return _NO_STEP if trace is None else _Step(trace, name)


# ---- settings -----------------------------------------------------------------------------------------------------

@dataclass
class _Scope:
    """The global settings, or one model's (None: follows the global value)."""

    level: bool | None = None
    rate: int | None = None
    count: int | None = None          # traces left; -1: no limit
    log_frequency: int | None = None
    seen: int = field(default=0)      # requests counted towards the rate since it was set


_FIELDS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}


def _integer(name: str, values: Sequence[str], low: int, meaning: str) -> int:
    if len(values) != 1:
        raise InvalidInput(f"{name} takes one value ({meaning}), got {len(values)}")
    try:
        number = int(values[0])
    except ValueError:
        number = low - 1
    if number < low or number >= 2**31:
        raise InvalidInput(f"{name} takes an integer {low} or more ({meaning}), got {values[0][:40]!r}")
    return number


def _level(values: Sequence[str]) -> bool:
    levels = set(values)
    if "TENSORS" in levels:
        raise InvalidInput("trace_level TENSORS is not supported: spans carry timings, never tensor contents; use "
                           "TIMESTAMPS")
    if not levels or not levels <= set(LEVELS) or levels == set(LEVELS):
        shown = ", ".join(repr(v[:20]) for v in values[:4])
        raise InvalidInput(f"trace_level [{shown}]: give OFF or TIMESTAMPS")
    return levels == {"TIMESTAMPS"}


def _apply(scope: _Scope, name: str, values: Sequence[str]) -> None:
    """One new setting value (already known to be a setting's name) on ``scope``; InvalidInput if not valid."""
    if name == "trace_file":
        if list(values) not in ([], [""]):
            raise InvalidInput("trace_file: writing traces to a file named by a client is refused; spans go to the "
                               "OTLP collector of --trace-endpoint, so trace_file can only be \"\"")
    elif name == "trace_mode":
        if list(values) != [MODE]:
            raise InvalidInput(f"trace_mode: this server traces with OpenTelemetry only ({MODE!r})")
    elif name == "trace_level":
        scope.level = _level(values)
    elif name == "trace_rate":
        scope.rate = _integer(name, values, 0, "one request in N is traced; 0: only those the client sampled")
        scope.seen = 0
    elif name == "trace_count":
        scope.count = _integer(name, values, -1, "traces still to take; -1: no limit")
    else:
        scope.log_frequency = _integer(name, values, 0, "export after every N traces; 0: on the exporter's schedule")


# ---- the tracer ---------------------------------------------------------------------------------------------------

class Tracing:
    """The server's tracer: its settings, the sampling decision per request, and the spans it makes.

    Spans go to the span processors: the OTLP exporter of ``config.trace_endpoint`` (OTLP over gRPC, batched),
    and any added with :meth:`add_span_processor` (tests add OpenTelemetry's in-memory exporter). Nothing is traced
    while there is none, whatever the settings say."""

    def __init__(self, config: ServerConfig) -> None:
        self._start = _Scope(level=config.trace_level == "TIMESTAMPS", rate=config.trace_rate,
                             count=config.trace_count, log_frequency=0)
        self._global = _Scope(**{k: getattr(self._start, k) for k in ("level", "rate", "count", "log_frequency")})
        self._models: dict[str, _Scope] = {}
        self._provider: TracerProvider | None = None
        self._tracer: otel.Tracer | None = None
        self._traces = 0
        self._exporter: SpanExporter | None = None
        self.enabled = False  # the fast check of every request: some scope traces and spans have somewhere to go
        if config.trace_endpoint:
            # Imported here: the exporter (and its protobuf modules) costs ~0.1 s and ~10 MB, only when used.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self._exporter = OTLPSpanExporter(endpoint=config.trace_endpoint)
            self.add_span_processor(BatchSpanProcessor(self._exporter))
            log.info("tracing: spans go to %s over OTLP/gRPC (trace_level %s, trace_rate %d)", config.trace_endpoint,
                     config.trace_level, config.trace_rate)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        if self._provider is None:
            resource = Resource.create({"service.name": SERVER_NAME, "service.version": SERVER_VERSION})
            # ALWAYS_ON: the decision is taken here (rate, count, the client's flag) before any span is made.
            self._provider = TracerProvider(sampler=ALWAYS_ON, resource=resource, shutdown_on_exit=False)
            self._tracer = self._provider.get_tracer("serving")
        self._provider.add_span_processor(processor)
        self._refresh()

    async def shutdown(self) -> None:
        """Export what is left (for up to ``EXPORT_AT_EXIT_S``) and stop the processors, off the event loop."""
        if self._provider is None:
            return
        provider, self._provider = self._provider, None
        self._refresh()
        done = asyncio.get_running_loop().run_in_executor(None, provider.shutdown)
        try:
            await asyncio.wait_for(asyncio.shield(done), EXPORT_AT_EXIT_S)
        except TimeoutError:
            log.warning("tracing: the collector took more than %g s; the spans not exported yet are dropped",
                        EXPORT_AT_EXIT_S)
            if self._exporter is not None:
                self._exporter.shutdown()  # stops its retries and closes its channel: the flush returns
            await done

    def _refresh(self) -> None:
        self.enabled = self._provider is not None and (
            bool(self._global.level) or any(scope.level for scope in self._models.values()))

    # ---- settings (Triton's trace extension) ----------------------------------------------------------------------
    def settings(self, model: str = "") -> dict[str, list[str]]:
        """The settings in effect for ``model`` (or the global ones), every value a list of strings."""
        scope = self._models.get(model, self._global)
        g = self._global
        level = scope.level if scope.level is not None else g.level
        return {
            "trace_file": [""],
            "trace_level": ["TIMESTAMPS" if level else "OFF"],
            "trace_rate": [str(scope.rate if scope.rate is not None else g.rate)],
            "trace_count": [str(scope.count if scope.count is not None else g.count)],
            "log_frequency": [str(scope.log_frequency if scope.log_frequency is not None else g.log_frequency)],
            "trace_mode": [MODE],
        }

    def update(self, model: str, changes: Mapping[str, Sequence[str] | None]) -> dict[str, list[str]]:
        """Apply ``changes`` to ``model``'s settings (a known model's name; "" for the global ones); a value of None
        (or no strings) clears the setting. All or nothing: InvalidInput if one is not valid."""
        unknown = [name for name in changes if name not in SETTINGS]
        if unknown:
            raise InvalidInput(f"unknown trace setting {unknown[0][:60]!r}; the settings are {', '.join(SETTINGS)}")
        if model and changes.get("log_frequency"):
            raise InvalidInput("log_frequency is the server's (one exporter for every model): set it without a "
                               "model name")
        scope = _Scope(**vars(self._models.get(model, _Scope()) if model else self._global))
        for name, values in changes.items():
            if values:
                _apply(scope, name, values)
            elif name in _FIELDS:  # cleared: a model's follows the global value, the global one its start value
                setattr(scope, _FIELDS[name], None if model else getattr(self._start, _FIELDS[name]))
                if name == "trace_rate":
                    scope.seen = 0
        if changes:
            log.info("trace settings of %s changed: %s", f"model {model!r}" if model else "the server",
                     {name: list(values or []) for name, values in changes.items()})
        if model:
            self._models[model] = scope
        else:
            self._global = scope
        self._refresh()
        if self._provider is None and scope.level:
            log.warning("trace_level is TIMESTAMPS but spans have nowhere to go: nothing is traced until the server "
                        "runs with --trace-endpoint URL")
        return self.settings(model)

    # ---- requests -------------------------------------------------------------------------------------------------
    def begin(self, name: str, model: str, request_id: str, carrier: Mapping[str, str],
              attributes: Mapping[str, str] | None = None) -> RequestTrace | None:
        """Decide whether this request is traced; if so, open its root span, make it the current trace and return
        it (the caller ends it with :meth:`finish`). ``carrier``: the request's headers or metadata, for
        ``traceparent`` and ``tracestate``."""
        g = self._global
        scope = self._models.get(model, g)
        if not (scope.level if scope.level is not None else g.level) or self._tracer is None:
            return None
        parent = None
        if "traceparent" in carrier:
            context = _PROPAGATOR.extract(carrier)
            remote = otel.get_current_span(context).get_span_context()
            if remote.is_valid:
                if not remote.trace_flags.sampled:
                    return None  # the client decided: not sampled
                parent = context
        if parent is None:
            owner = scope if scope.rate is not None else g
            owner.seen += 1
            if not owner.rate or owner.seen % owner.rate:
                return None
        owner = scope if scope.count is not None else g
        if owner.count == 0:
            return None
        if owner.count is not None and owner.count > 0:
            owner.count -= 1
        span = self._tracer.start_span(name, context=parent, kind=otel.SpanKind.SERVER, start_time=now_ns(),
                                       attributes={"serving.model": model, "serving.request_id": request_id,
                                                   **(attributes or {})})
        trace = RequestTrace(span)
        trace.token = _current.set(trace)
        return trace

    def finish(self, trace: RequestTrace, outcome: str) -> None:
        """End the request's spans: one child per recorded step, then the root, with ``outcome`` ("OK" or the
        error's status name)."""
        end = now_ns()
        if trace.token is not None:
            _current.reset(trace.token)
        assert self._tracer is not None  # set before any trace began
        if trace.compute_end:
            trace.steps.append(("response", trace.compute_end, end, None, None))
        parent = otel.set_span_in_context(trace.span)
        for name, start, stop, error, attributes in trace.steps:
            child = self._tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
            if error is not None:
                child.set_status(otel.Status(otel.StatusCode.ERROR, _description(error)))
            child.end(end_time=stop)
        trace.span.set_attribute("serving.outcome", outcome)
        if outcome != "OK":
            trace.span.set_status(otel.Status(otel.StatusCode.ERROR, outcome))
        trace.span.end(end_time=end)
        self._traces += 1
        every = self._global.log_frequency
        if every and self._traces % every == 0 and self._provider is not None:
            asyncio.get_running_loop().run_in_executor(None, self._provider.force_flush)


def _description(error: BaseException) -> str:
    # A domain error's message is meant for the client; anything else may hold internals: its type only.
    return f"{type(error).__name__}: {error}"[:500] if isinstance(error, ServingError) else type(error).__name__


def begin_message(name: str, model: str, request_id: str,
                  metadata: Callable[[], Iterable[tuple[str, str]] | None]) -> RequestTrace | None:
    """One message of a traced stream (each is a request): traced like a unary call, under the stream's metadata."""
    tracing = _stream.get()
    if tracing is None or not tracing.enabled:
        return None
    return tracing.begin(name, model, request_id, carrier(metadata()),
                         {"rpc.system": "grpc", "rpc.method": name})


def enter_stream(tracing: Tracing) -> Token[Tracing | None]:
    """A traced stream's handler starts: its messages find ``tracing`` (``begin_message``) until ``leave_stream``."""
    return _stream.set(tracing)


def leave_stream(token: Token[Tracing | None]) -> None:
    _stream.reset(token)


def finish_message(trace: RequestTrace, outcome: str) -> None:
    tracing = _stream.get()
    if tracing is not None:
        tracing.finish(trace, outcome)


def carrier(metadata: Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """gRPC metadata as a carrier for the propagator (its keys are lower case already)."""
    return {key: value for key, value in metadata or () if key in ("traceparent", "tracestate")}
