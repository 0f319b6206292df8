"""Registering a servicer with request parsing the server controls.

The generated ``add_…_to_server`` functions hand gRPC the message class's ``FromString``: bytes that are not a valid
message then fail inside gRPC itself, which logs a traceback and answers UNKNOWN. Here the parser never raises: it
returns an :class:`UndecodableRequest`, and the ``rpc`` decorator (or the stream handler) answers it with
INVALID_ARGUMENT like any other bad input.

The parser is also where grpc hands a request message to the server, complete: its bytes are counted there against
the in-flight budget (``serving.runtime.budget``, shared with HTTP). A message that fits is handed on as
:class:`Held` (the parsed message, or the :class:`UndecodableRequest` in its place, with its hold, released when its
call is over, or in a stream when its answer is done: grpc keeps the bytes until then); one that does not fit is
never parsed and becomes a :class:`RefusedRequest`, answered RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from serving.errors import InvalidInput, Overloaded, ServingError
from serving.runtime.budget import Hold, InflightBudget


class StandIn:
    """Stands in for a request message that is answered with ``error()`` and never reaches a servicer."""

    def error(self) -> ServingError:
        raise NotImplementedError


class UndecodableRequest(StandIn):
    """Stands in for a request whose bytes are not a valid message of the method's input type."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidInput:
        return InvalidInput(f"the request is not a valid {self.type_name} message")


class RefusedRequest(StandIn):
    """Stands in for a message whose bytes did not fit in the in-flight budget (never parsed). It keeps the refusal's
    words, not the exception: that one's traceback holds the parser's frame, and with it the message's bytes."""

    def __init__(self, refusal: Overloaded) -> None:
        self.reason = str(refusal)

    def error(self) -> Overloaded:
        return Overloaded(self.reason)


class Held:
    """A parsed request message and the hold its bytes have on the in-flight budget."""

    __slots__ = ("hold", "message")

    def __init__(self, message: Any, hold: Hold) -> None:
        self.message, self.hold = message, hold


def _parser(message_class: Any, budget: InflightBudget) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            hold = budget.take(len(data), "grpc")
        except Overloaded as e:
            return RefusedRequest(e)
        try:
            return Held(message_class.FromString(data), hold)
        except (DecodeError, RecursionError):  # RecursionError: nesting deeper than the parser allows
            return Held(UndecodableRequest(message_class.DESCRIPTOR.full_name), hold)

    return parse


# (client streaming, server streaming) → grpc's handler factory for that kind of method
HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object,
                budget: InflightBudget) -> None:
    """Serve every method of ``service`` that ``servicer`` implements (the servicer's method of the same name), each
    request message counted against ``budget``."""
    handlers = {}
    for method in service.methods:
        kind = HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_parser(message_factory.GetMessageClass(method.input_type), budget),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)  # the fast lookup generated code uses too
