"""Whose gRPC call it is: the identity its fair share is counted for (``serving.runtime.fairshare.share_var``).

With tokens, the token's client (``client_var``, which ``serving.grpc.auth`` sets before the call runs); without, the
client's address: the connection's peer, or, from a trusted proxy, the address it forwards for in its
``x-forwarded-for`` metadata (``serving.runtime.peers``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import grpc

from serving.runtime.auth import client_var
from serving.runtime.peers import FORWARDED_FOR, Peers

Identify = Callable[[grpc.aio.ServicerContext], str]


def peer_host(peer: str) -> str:
    """The address of a gRPC peer string: ``ipv4:10.0.0.7:5555`` → ``10.0.0.7``, ``ipv6:[::1]:5555`` (or
    percent-encoded, as newer gRPC writes it) → ``::1``; anything else (``unix:…``) as it is."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0]
    if scheme == "ipv6":
        return unquote(rest).rpartition(":")[0].strip("[]")
    return peer


def _forwarded(context: grpc.aio.ServicerContext) -> str | None:
    values = [value for key, value in context.invocation_metadata() or () if key == FORWARDED_FOR]
    return ",".join(v for v in values if isinstance(v, str)) or None


def identifier(tokens: bool, peers: Peers) -> Identify:
    """The function that names a call's client: by token when ``tokens`` are on, else by address."""
    if tokens:
        return lambda context: client_var.get()
    if not peers.trusted:
        return lambda context: peers.client(peer_host(context.peer()))
    return lambda context: peers.client(peer_host(context.peer()), _forwarded(context))
