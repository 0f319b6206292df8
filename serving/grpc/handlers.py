"""Registering a servicer with request parsing the server controls.

The generated ``add_…_to_server`` functions hand gRPC the message class's ``FromString``: bytes that are not a valid
message then fail inside gRPC itself, which logs a traceback and answers UNKNOWN. Here the parser never raises: it
returns an :class:`UndecodableRequest`, and the ``rpc`` decorator (or the stream handler) answers it with
INVALID_ARGUMENT like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from serving.errors import InvalidInput


class UndecodableRequest:
    """Stands in for a request whose bytes are not a valid message of the method's input type."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidInput:
        return InvalidInput(f"the request is not a valid {self.type_name} message")


def _parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except (DecodeError, RecursionError):  # RecursionError: nesting deeper than the parser allows
            return UndecodableRequest(message_class.DESCRIPTOR.full_name)

    return parse


# (client streaming, server streaming) → grpc's handler factory for that kind of method
HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve every method of ``service`` that ``servicer`` implements (the servicer's method of the same name)."""
    handlers = {}
    for method in service.methods:
        kind = HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_parser(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)  # the fast lookup generated code uses too
