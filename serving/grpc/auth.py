"""Token auth for gRPC: an interceptor that answers UNAUTHENTICATED before any handler runs.

The token travels as ``authorization: Bearer <token>`` metadata. Health stays open: ``grpc.health.v1`` and the
Open Inference Protocol's liveness/readiness calls answer without a token, as load balancers and probes need.
A refused call never reaches the servicer: its message is not even parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.grpc.handlers import HANDLER_KINDS
from serving.runtime.auth import HEADER, REFUSED, Tokens
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


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._log_limit = RateLimit(5)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS or self.tokens.allows(_header(details)):
            return handler
        if self._log_limit.allow(details.method) is not None:
            log.info("%s UNAUTHENTICATED", details.method, extra={"method": details.method, "code": "UNAUTHENTICATED"})
        kind = (handler.request_streaming, handler.response_streaming)
        return HANDLER_KINDS[kind](_refuse)  # no deserializer: the refused message stays unparsed bytes
