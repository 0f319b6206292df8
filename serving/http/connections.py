"""What idle, slow or too many HTTP connections may hold: bounded, as the gRPC side bounds them with core options.

aiohttp has no limit on open connections and no timeout for a client that sends its request headers slowly (or
never), so a few thousand sockets opened and left silent would take every file descriptor the process has, gRPC's
included. :class:`ConnectionGuard` wraps aiohttp's protocol factory: at most ``limit`` connections are open at
once, and a connection must start a request within ``timeout_s`` of opening, and again within ``timeout_s`` of each
answer (which also bounds how long a client may leave an answer unread). At the limit, a new connection takes the
place of the one that has waited longest without a request in progress (opened and silent, or kept alive after its
answer); only when every connection is in the middle of a request is the new one closed. So connections opened and
left idle cannot lock other clients out: they are what goes first.

One client address (the peer's IP: each address of 127.0.0.0/8 is its own) holds at most ``per_client`` of them
(``--max-connections-per-client``): at its cap, its new connection takes the place of its own connection idle the
longest, or is closed when all of its connections are in a request. So one address cannot fill the pool, and a
client reconnecting as fast as its connections are closed only ever displaces its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from serving.runtime.logs import RateLimit

log = logging.getLogger("serving.http")


class ConnectionGuard:
    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int, timeout_s: float,
                 per_client: int = 0) -> None:
        self.factory, self.limit, self.timeout_s, self.per_client = factory, limit, timeout_s, per_client
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}
        self.idle: dict[_Guarded, None] = {}  # open and with no request in progress, longest waiting first
        self.clients: dict[str, _Client] = {}  # client address → its connections (while it has any)
        self.evicted = 0
        self._log_limit = RateLimit(1)

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        guarded = self.open.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.disarm()

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        guarded = self.open.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.arm()

    def admit(self, host: str) -> bool:
        """Room for one more connection from ``host``, made by closing an idle connection where needed (its own
        first, at its cap); False when there is none to close."""
        client = self.clients.get(host)
        if self.per_client and host and client is not None and len(client.open) >= self.per_client:
            if not self._evict(next(iter(client.idle), None)):
                self._refused_client(host)
                return False
            self._log("client", "HTTP connections per client (--max-connections-per-client %d): closed the one of %s "
                      "idle the longest", self.per_client, host)
        if len(self.open) >= self.limit and not self.make_room():
            self.refused()
            return False
        return True

    def make_room(self) -> bool:
        """At the limit: close the connection that has waited longest without a request; False when every open
        connection is in the middle of one."""
        if not self._evict(next(iter(self.idle), None)):
            return False
        self._log("evicted", "HTTP connection limit (--max-http-connections %d): closed the connection idle the "
                  "longest", self.limit)
        return True

    def _evict(self, victim: _Guarded | None) -> bool:
        if victim is None or victim.transport is None:
            return False
        victim.forget()
        victim.transport.abort()
        self.evicted += 1
        return True

    def _log(self, key: str, message: str, *args: object) -> None:
        if (skipped := self._log_limit.allow(key)) is not None:
            log.info(message, *args, extra={"similar_lines_skipped": skipped} if skipped else None)

    def refused(self) -> None:
        if (skipped := self._log_limit.allow("limit")) is not None:
            log.warning("HTTP connection refused: %d open, the limit (--max-http-connections)", self.limit,
                        extra={"open": len(self.open), **({"similar_lines_skipped": skipped} if skipped else {})})

    def _refused_client(self, host: str) -> None:
        if (skipped := self._log_limit.allow("client limit")) is not None:
            log.warning("HTTP connection refused: %s has %d open, each in a request, the limit per client address "
                        "(--max-connections-per-client)", host, self.per_client,
                        extra={"client": host, **({"similar_lines_skipped": skipped} if skipped else {})})


class _Client:
    """One client address's connections: all that are open, and those idle, longest waiting first."""

    __slots__ = ("idle", "open")

    def __init__(self) -> None:
        self.open: set[_Guarded] = set()
        self.idle: dict[_Guarded, None] = {}


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The client's address of a connection (its IP, without the port); "" where there is none (a Unix socket)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard's bookkeeping around it."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None
        self.host = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self.guard
        self.host = peer_host(transport)
        if not guard.admit(self.host):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport = transport  # type: ignore[assignment]
        guard.open[transport] = self
        client = guard.clients.get(self.host)
        if client is None:
            client = guard.clients[self.host] = _Client()
        client.open.add(self)
        self.client = client
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        """No request in progress: the timeout runs, and the connection is first in line to make room."""
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(self.guard.timeout_s, self._expire)
        self.guard.idle[self] = None
        if self.client is not None:
            self.client.idle[self] = None

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.idle.pop(self, None)
        if self.client is not None:
            self.client.idle.pop(self, None)

    def forget(self) -> None:
        """Out of the guard's books (closed, or about to be): it counts toward no limit any more."""
        self.disarm()
        if self.transport is not None:
            self.guard.open.pop(self.transport, None)
        if self.client is not None:
            self.client.open.discard(self)
            if not self.client.open:
                self.guard.clients.pop(self.host, None)
            self.client = None

    def _expire(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.forget()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ProtocolLog:
    """aiohttp's server logger (``handler_args["logger"]``): a request its HTTP parser refuses (a malformed request
    line, header, length or chunk) is the client's fault, answered 400 by aiohttp, and becomes one warning a second
    without a traceback; anything else aiohttp reports keeps its traceback at ERROR (a fault of the server's)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("serving.http.protocol")
        self._limit = RateLimit(1)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            if (skipped := self._limit.allow("malformed")) is not None:
                reason = str(getattr(exc_info, "message", "") or type(exc_info).__name__).strip().splitlines()
                self._log.warning("malformed HTTP request refused (400): %s", (reason or [""])[0].rstrip(":")[:200],
                                  extra={"similar_lines_skipped": skipped} if skipped else None)
            return
        self._log.error(msg, *args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name: str) -> Any:  # debug, info, warning, error: as a Logger
        return getattr(self._log, name)
