"""What idle, slow or too many HTTP connections may hold: bounded, as the gRPC side bounds them with core options.

aiohttp has no limit on open connections and no timeout for a client that sends its request headers slowly (or
never), so a few thousand sockets opened and left silent would take every file descriptor the process has, gRPC's
included. :class:`ConnectionGuard` wraps aiohttp's protocol factory: at most ``limit`` connections are open at
once, and a connection must start a request within ``timeout_s`` of opening, and again within ``timeout_s`` of each
answer (which also bounds how long a client may leave an answer unread). At the limit, a new connection takes the
place of the one that has waited longest without a request in progress (opened and silent, or kept alive after its
answer); only when every connection is in the middle of a request is the new one closed. So connections opened and
left idle cannot lock other clients out: they are what goes first.
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
    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int, timeout_s: float) -> None:
        self.factory, self.limit, self.timeout_s = factory, limit, timeout_s
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}
        self.idle: dict[_Guarded, None] = {}  # open and with no request in progress, longest waiting first
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

    def make_room(self) -> bool:
        """At the limit: close the connection that has waited longest without a request; False when every open
        connection is in the middle of one."""
        victim = next(iter(self.idle), None)
        if victim is None or victim.transport is None:
            return False
        self.idle.pop(victim)
        self.open.pop(victim.transport, None)
        victim.disarm()
        victim.transport.abort()
        self.evicted += 1
        if (skipped := self._log_limit.allow("evicted")) is not None:
            log.info("HTTP connection limit (--max-http-connections %d): closed the connection idle the longest",
                     self.limit, extra={"similar_lines_skipped": skipped} if skipped else None)
        return True

    def refused(self) -> None:
        if (skipped := self._log_limit.allow("limit")) is not None:
            log.warning("HTTP connection refused: %d open, the limit (--max-http-connections)", self.limit,
                        extra={"open": len(self.open), **({"similar_lines_skipped": skipped} if skipped else {})})


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard's bookkeeping around it."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.guard.open) >= self.guard.limit and not self.guard.make_room():
            transport.abort()  # type: ignore[attr-defined]
            self.guard.refused()
            return
        self.transport = transport  # type: ignore[assignment]
        self.guard.open[transport] = self
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        """No request in progress: the timeout runs, and the connection is first in line to make room."""
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(self.guard.timeout_s, self._expire)
        self.guard.idle[self] = None

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.idle.pop(self, None)

    def _expire(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.disarm()
        self.guard.open.pop(self.transport, None)
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
