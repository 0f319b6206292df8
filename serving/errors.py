"""Domain errors, raised where a problem is found, each with a transport-neutral :class:`Kind`.

The front ends each hold one small table from kind to their own status (``serving.grpc.status``: gRPC codes,
``serving.http.status``: HTTP statuses); nothing below them knows either. ``Kind.outcome`` is the canonical status
name (google.rpc.Code) that metrics and log lines use for every transport, so one dashboard reads both.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """What went wrong, as a caller must act on it."""

    INVALID_INPUT = "invalid input"        # fix the request
    UNAUTHENTICATED = "unauthenticated"    # send a valid token
    NOT_FOUND = "not found"                # no such model or version
    NOT_READY = "not ready"                # retry elsewhere or later: loading, failed its checks, shutting down
    OVERLOADED = "overloaded"              # back off and retry
    TOO_LARGE = "too large"                # split the request
    DEADLINE = "deadline exceeded"         # the request's deadline passed before it ran
    UNSUPPORTED = "unsupported"            # this server does not offer that (CUDA shared memory on a CPU build…)
    INTERNAL = "internal"                  # a bug: logged with the request id

    @property
    def outcome(self) -> str:
        return _OUTCOMES[self]


_OUTCOMES = {
    Kind.INVALID_INPUT: "INVALID_ARGUMENT", Kind.UNAUTHENTICATED: "UNAUTHENTICATED", Kind.NOT_FOUND: "NOT_FOUND",
    Kind.NOT_READY: "UNAVAILABLE", Kind.OVERLOADED: "RESOURCE_EXHAUSTED", Kind.TOO_LARGE: "RESOURCE_EXHAUSTED",
    Kind.DEADLINE: "DEADLINE_EXCEEDED", Kind.UNSUPPORTED: "UNIMPLEMENTED", Kind.INTERNAL: "INTERNAL",
}


class ServingError(Exception):
    """Base class: every subclass has a fixed meaning for callers, its ``kind``."""

    kind = Kind.INTERNAL


class InvalidInput(ServingError):
    """The request or the data in it cannot be used: undecodable image, wrong shape or dtype, bad top_k…"""

    kind = Kind.INVALID_INPUT


class ModelNotFound(ServingError):
    """No such model, or no such version of it."""

    kind = Kind.NOT_FOUND


class NotReady(ServingError):
    """The model or the server cannot answer now (loading, failed its self-check, shutting down)."""

    kind = Kind.NOT_READY


class Overloaded(ServingError):
    """The queue is full; the client should back off and retry."""

    kind = Kind.OVERLOADED


class TooLarge(ServingError):
    """The request, or the tensor it expands to, exceeds a size limit; it must be split to succeed."""

    kind = Kind.TOO_LARGE


class SlowReader(ServingError):
    """A stream's client stopped reading its responses; the stream is ended so it stops holding server memory."""

    kind = Kind.OVERLOADED


class ModelRejected(ServingError):
    """A model folder failed a load-time check (sha256, golden self-check, malformed files)."""

    kind = Kind.NOT_READY


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it was processed (it is dropped from the queue, never run)."""

    kind = Kind.DEADLINE


class Unauthenticated(ServingError):
    """The server wants a bearer token (``--auth-token-file``) and the request had none, or not a valid one."""

    kind = Kind.UNAUTHENTICATED


class Unsupported(ServingError):
    """A feature of the protocol this server does not offer (Triton's ``UNSUPPORTED``: gRPC UNIMPLEMENTED, HTTP
    501), as opposed to a request that is wrong."""

    kind = Kind.UNSUPPORTED
