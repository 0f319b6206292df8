"""Token auth for gRPC: an interceptor that answers UNAUTHENTICATED before any handler runs.

The token travels as ``authorization: Bearer <token>`` metadata. Health stays open: ``grpc.health.v1`` and the
Open Inference Protocol's liveness/readiness calls answer without a token, as load balancers and probes need.
A refused call never reaches the servicer: its message is not even parsed. An accepted call runs with
``client_var`` set to the token's identity, which the data plane reads (whose shared-memory regions, whose share).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.grpc.handlers import HANDLER_KINDS
from serving.runtime.auth import HEADER, REFUSED, Tokens, client_var
from serving.runtime.logs import RateLimit

log = logging.getLogger("serving.auth")

OPEN_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
})


def _header(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == HEADER:
            return value if isinstance(value, str) else None
    return None


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    # Set and return rather than abort(): see serving.grpc.status._fail for the memory this saves.
    context.set_code(grpc.StatusCode.UNAUTHENTICATED)
    context.set_details(REFUSED)


def _as_client(handler: grpc.RpcMethodHandler, identity: str) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour run under ``client_var = identity``. Only coroutine behaviours are wrapped (every
    servicer method of ours); an async generator (reflection's stream) needs no identity and is left as it is."""
    field = ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming
                                                                        else "unary")
    behavior = getattr(handler, field)
    if not inspect.iscoroutinefunction(behavior):
        return handler

    async def as_client(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = client_var.set(identity)
        try:
            return await behavior(request, context)
        finally:
            client_var.reset(token)

    return handler._replace(**{field: as_client})  # type: ignore[attr-defined]


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._log_limit = RateLimit(5)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        identity = self.tokens.identify(_header(details))
        if identity is not None:
            return _as_client(handler, identity)
        if self._log_limit.allow(details.method) is not None:
            log.info("%s UNAUTHENTICATED", details.method, extra={"method": details.method, "code": "UNAUTHENTICATED"})
        kind = (handler.request_streaming, handler.response_streaming)
        return HANDLER_KINDS[kind](_refuse)  # no deserializer: the refused message stays unparsed bytes
