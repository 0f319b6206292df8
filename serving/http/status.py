"""The one place where domain errors become HTTP statuses (the gRPC twin is serving.grpc.status).

Error bodies are KServe's ``{"error": "<message>"}``, which ``tritonclient.http`` raises as the exception text.
The message is the one gRPC would carry (``status_for``): an unexpected exception is logged there with its
traceback and answered 500 quoting the request id, never the exception's text.
"""

from __future__ import annotations

import grpc

from serving.errors import TooLarge
from serving.grpc.status import status_for

# From the gRPC code that status_for gives, so the two transports cannot disagree on what an error is.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,   # queue full; a too-large request is 413, below
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
}


def http_status_for(exc: BaseException, request_id: str) -> tuple[int, grpc.StatusCode, str]:
    """(HTTP status, the gRPC code it stands for, message) for an exception raised while handling a request."""
    code, message = status_for(exc, request_id)
    status = 413 if isinstance(exc, TooLarge) else HTTP_STATUS.get(code, 500)
    return status, code, message
