"""A gRPC client in raw HTTP/2 that never reads its answers, as a hostile client can: it tells the server its receive
window is 0, so no answer's DATA can ever be sent, while it sends whole requests (it honours the server's windows, so
the server has no protocol error to close the connection for).

Only what the tests need: HEADERS with literal, unindexed header fields (no HPACK table, no Huffman), DATA split to
the peer's windows and 16 KiB frames; SETTINGS and PING acknowledged; a stream counts as ended when the server ends it
(HEADERS with END_STREAM: an answer of trailers only, or RST_STREAM).
"""

from __future__ import annotations

import select
import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME = 16384
DEFAULT_WINDOW = 65535


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """One header field, literal without indexing, new name, no Huffman (RFC 7541, 6.2.2)."""
    if max(len(name), len(value)) >= 127:  # a longer one needs HPACK's multi-byte length
        raise ValueError("header fields of the tests are short")
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class UnreadConnection:
    """One HTTP/2 connection to ``127.0.0.1:port`` from ``source`` whose answers are never read."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 0)))
        self.connection_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.windows: dict[int, int] = {}  # what the server lets each stream of ours send
        self.ended: set[int] = set()
        self._next = 1
        self._buffer = b""

    def call(self, path: str, message: bytes) -> int:
        """Send one unary call (``/package.Service/Method``) with a serialized message; its stream id."""
        stream, self._next = self._next, self._next + 2
        self.windows[stream] = self.initial_window
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"x"),
                  (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream, b"".join(_literal(k, v) for k, v in fields)))
        body = b"\x00" + struct.pack(">I", len(message)) + message  # gRPC's frame: uncompressed, length, message
        sent = 0
        while sent < len(body):
            room = min(self.connection_window, self.windows[stream], MAX_FRAME, len(body) - sent)
            if room <= 0:
                self.pump(1.0)  # wait for the server's window updates
                continue
            last = sent + room == len(body)
            self.sock.sendall(_frame(DATA, END_STREAM if last else 0, stream, body[sent:sent + room]))
            self.connection_window -= room
            self.windows[stream] -= room
            sent += room
        return stream

    def pump(self, seconds: float) -> None:
        """Read and act on what the server sent within ``seconds`` (one read)."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        if not readable:
            return
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data
        while len(self._buffer) >= 9 and len(self._buffer) >= 9 + (n := int.from_bytes(self._buffer[:3], "big")):
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload, self._buffer = self._buffer[9:9 + n], self._buffer[9 + n:]
            self._received(kind, flags, stream, payload)

    def _received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                setting, value = struct.unpack(">HI", payload[i:i + 6])
                if setting == INITIAL_WINDOW_SIZE:
                    for s in self.windows:
                        self.windows[s] += value - self.initial_window
                    self.initial_window = value
            self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream == 0:
                self.connection_window += increment
            elif stream in self.windows:
                self.windows[stream] += increment
        elif kind == PING and not flags & ACK:
            self.sock.sendall(_frame(PING, ACK, 0, payload))
        elif (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM:
            self.ended.add(stream)

    def close(self) -> None:
        self.sock.close()
