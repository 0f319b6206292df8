"""Clients with source addresses of their own on loopback (127.0.0.2, 127.0.0.3 …), so that rules per client address
meet distinct clients in one test process.

A socket binds its source address itself (``socket.create_connection(..., source_address=(ip, 0))``, httpx's
``local_address``, http.client's ``source_address``); a gRPC channel cannot, so :class:`SourceForwarder` listens on
127.0.0.1 and opens, for each connection it accepts, one connection to the server from its source address, copying
bytes both ways. Each gRPC connection stays one connection, and the server sees it come from that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class SourceForwarder:
    """``address`` (127.0.0.1:PORT) leads to 127.0.0.1:``port`` from ``source``; ``close()`` ends every connection."""

    def __init__(self, port: int, source: str) -> None:
        self.target, self.source = port, source
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"forward-{source}", daemon=True)
        self._thread.start()
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every connection, to end them at close
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accepted, "127.0.0.1", 0), self.loop).result(10)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target,
                                                                     local_addr=(self.source, 0))
            except OSError:
                writer.close()
                return
            self._writers.add(up_writer)
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
            self._writers.discard(up_writer)
        finally:
            self._writers.discard(writer)
            self._pipes.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in list(self._writers):  # each copy then sees its connection end, and returns
                writer.transport.abort()
            await asyncio.gather(*self._pipes, return_exceptions=True)

        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from ``reader`` to ``writer`` until either side ends; then ``writer`` is closed, which ends the other
    direction too."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
