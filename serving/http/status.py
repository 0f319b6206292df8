"""The one place where domain errors become HTTP statuses (the gRPC front end has its own table).

Error bodies are KServe's ``{"error": "<message>"}``, which ``tritonclient.http`` raises as the exception text.
The message comes from ``serving.runtime.requests.error_of``: an unexpected exception is logged there with its
traceback and answered 500 quoting the request id, never the exception's text.
"""

from __future__ import annotations

from serving.errors import Kind
from serving.runtime.requests import error_of

HTTP_STATUS: dict[Kind, int] = {
    Kind.INVALID_INPUT: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.NOT_FOUND: 404,
    Kind.TOO_LARGE: 413,
    Kind.OVERLOADED: 429,
    Kind.INTERNAL: 500,
    Kind.UNSUPPORTED: 501,
    Kind.NOT_READY: 503,
    Kind.DEADLINE: 504,
}


def http_status_for(exc: BaseException, request_id: str) -> tuple[int, Kind, str]:
    """(HTTP status, the error's kind, message) for an exception raised while handling a request."""
    kind, message = error_of(exc, request_id)
    return HTTP_STATUS[kind], kind, message
