"""Connections per client address on the gRPC port (``--max-connections-per-client``), counted call by call.

grpc core has no per-address limit: it accepts every connection, and its one connection limit
(``grpc.max_allowed_incoming_connections``) closes newcomers rather than idle connections, so connections left idle
would lock everyone out. Python never sees a connection either, only the calls on one: ``context.peer()`` names the
connection a call came on (``ipv4:IP:PORT``; one client port, one connection). What is capped here is therefore the
number of one address's connections *with calls in progress*: a call from an address that already has ``cap`` other
connections with calls in progress is refused with RESOURCE_EXHAUSTED before any of its work, while calls on the
connections it has go on being served. A unary call counts from the moment its message has arrived (when grpc hands
it to the server), a stream from its start. Connections without calls hold no call slot, no admission slot and no
budget; grpc closes them after ``--max-connection-idle-s``.

Each address of 127.0.0.0/8 is its own client, as on the HTTP port.
"""

from __future__ import annotations

from urllib.parse import unquote

from serving.errors import Overloaded


def client_of(peer: str) -> tuple[str, str]:
    """(client address, connection) of a grpc peer: ``ipv4:127.0.0.2:5000`` → ("127.0.0.2", "5000"),
    ``ipv6:[::1]:5000`` (also percent-encoded, as newer grpc writes it) → ("::1", "5000"); a peer of any other kind
    (``unix:…``) is one client on one connection, never refused."""
    kind, _, address = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer, ""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), port


class PeerCalls:
    """Calls in progress per client address and connection; ``enter`` refuses a call that would add a connection to
    an address at its cap. Used on the event loop only."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the connections per client must be at least 1")
        self.cap = cap
        self._clients: dict[str, dict[str, int]] = {}  # address → {connection: calls in progress}

    def enter(self, peer: str) -> tuple[str, str]:
        """Count one call from ``peer``; its key for ``leave``. ``Overloaded`` when it comes on a connection the
        address does not use yet and the address already has ``cap`` connections with calls."""
        host, connection = key = client_of(peer)
        connections = self._clients.get(host)
        if connections is None:
            connections = self._clients[host] = {}
        calls = connections.get(connection)
        if calls is None and len(connections) >= self.cap:
            raise Overloaded(f"too many connections from {host}: {self.cap} of its connections have calls in "
                             "progress, the most one client address may use (--max-connections-per-client); send "
                             "this call on one of them, or retry later")
        connections[connection] = (calls or 0) + 1
        return key

    def leave(self, key: tuple[str, str]) -> None:
        host, connection = key
        connections = self._clients[host]
        if connections[connection] > 1:
            connections[connection] -= 1
            return
        del connections[connection]
        if not connections:
            del self._clients[host]

    def connections(self, host: str) -> int:
        """Connections of ``host`` with calls in progress now."""
        return len(self._clients.get(host, ()))
