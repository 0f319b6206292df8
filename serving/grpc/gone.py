"""grpc.aio's own ERROR line for an answer whose connection ended under it, turned into what it is: a client gone.

When a call's connection ends while its answer is being sent (a client that read nothing, then closed), grpc.aio's
send fails with ``ExecuteBatchError``. It checks whether the client closed the call first, but that news and the
failed send race each other, so it often logs "ExecuteBatchError raised in core by servicer method [...]" at ERROR
with a traceback: any client could page an operator at will. The send is grpc's own, after the servicer returned,
so the line never reports a fault of the server's code: :class:`ClientGone` rewrites it to one info line (at most one
a second) saying the client went away, as the rest of the server logs CANCELLED.
"""

from __future__ import annotations

import logging

from serving.runtime.logs import RateLimit

GRPC_LOGGER = "grpc._cython.cygrpc"
SEND_FAILED = "ExecuteBatchError raised in core by servicer method ["


class ClientGone(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._limit = RateLimit(1)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(SEND_FAILED):
            return True
        skipped = self._limit.allow("gone")
        if skipped is None:
            return False
        method = message[len(SEND_FAILED):].rstrip("]")
        record.msg, record.args = "%s CANCELLED: the client's connection ended before its answer was sent", (method,)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        record.stack_info = None
        if skipped:
            record.similar_lines_skipped = skipped
        return True


def install() -> None:
    """Put the filter on grpc's logger, once per process (the front end calls it; more servers share it)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, ClientGone) for f in logger.filters):
        logger.addFilter(ClientGone())
