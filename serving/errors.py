"""Domain errors, raised where a problem is found; serving.grpc.status maps them to status codes in one place."""

from __future__ import annotations


class ServingError(Exception):
    """Base class: every subclass has a fixed meaning for callers (and a fixed gRPC status code)."""


class InvalidInput(ServingError):
    """The request or the data in it cannot be used: undecodable image, wrong shape or dtype, bad top_k…"""


class ModelNotFound(ServingError):
    """No such model, or no such version of it."""


class NotReady(ServingError):
    """The model or the server cannot answer now (loading, failed its self-check, shutting down)."""


class Overloaded(ServingError):
    """The queue is full; the client should back off and retry."""


class TooLarge(ServingError):
    """The request, or the tensor it expands to, exceeds a size limit; it must be split to succeed."""


class SlowReader(ServingError):
    """A stream's client stopped reading its responses; the stream is ended so it stops holding server memory."""


class ModelRejected(ServingError):
    """A model folder failed a load-time check (sha256, golden self-check, malformed files)."""


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it was processed (it is dropped from the queue, never run)."""


class Unauthenticated(ServingError):
    """The server wants a bearer token (``--auth-token-file``) and the request had none, or not a valid one."""
