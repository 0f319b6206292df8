"""The two ways a batch job turns paths into rows, both yielding lists of :class:`Row` in input order.

- :func:`classify_local`: the shared :class:`~serving.runtime.predictor.Predictor`. Worker processes
  (``serving.batch.decode``) read and preprocess groups of ``batch_size`` files ahead of the consumer, while the
  consumer runs onnxruntime on the previous group, so decoding and inference overlap.
- :func:`classify_remote`: the gRPC :class:`~serving.client.Client`; a thread pool keeps ``in_flight`` Classify
  requests of up to ``batch_size`` images each on the wire, and the server's dynamic batcher merges them.

A file that cannot be read or decoded becomes an error row and the job goes on. A failure that is not about one
file (the model, the server, the network) raises instead, so that no error row claims a file is bad when it is not;
the rows written so far stay, and ``--resume`` carries on from there.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import closing
from typing import TYPE_CHECKING, TypeVar

from serving.batch.decode import Group, decoder, read_file
from serving.batch.rows import Row
from serving.contract.prediction import top_predictions
from serving.runtime.predictor import Predictor

if TYPE_CHECKING:
    import grpc

    from serving.client import Client

T = TypeVar("T")
_END = object()


class RemoteError(RuntimeError):
    """The server failed in a way that says nothing about the files (unreachable, model gone, retries spent)."""


def ordered(items: Iterable[T], work: Callable[[T], object], pool: Executor,
            ahead: int) -> Iterator[tuple[T, object]]:
    """``(item, work(item))`` in input order, keeping up to ``ahead`` calls queued or running in ``pool``."""
    pending: deque[tuple[T, Future]] = deque()
    iterator = iter(items)
    try:
        while True:
            while len(pending) < ahead and (item := next(iterator, _END)) is not _END:
                pending.append((item, pool.submit(work, item)))  # type: ignore[arg-type]
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()
    finally:  # stopped early (error, Ctrl-C): don't decode what nobody will read
        for _, future in pending:
            future.cancel()


# ---- local ---------------------------------------------------------------------------------------------------------

def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def classify_local(predictor: Predictor, paths: Iterable[str], *, top_k: int = 0, batch_size: int = 32,
                   pool: Executor | None = None, prefetch: int = 4) -> Iterator[list[Row]]:
    """Rows for ``paths``, one list per group of ``batch_size`` files (one onnxruntime run for its good files).

    With a ``pool`` (``serving.batch.decode.start_decoders``) up to ``prefetch`` groups are decoded there while
    this thread runs onnxruntime (two per worker: decoders never wait for it); without one, files are decoded here,
    between runs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = predictor.resolve_top_k(top_k)
    decode = decoder(predictor.manifest.spec, predictor.max_pixels)
    groups = chunks(paths, batch_size)
    decoded: Iterator[tuple[list[str], Group]] = (
        ordered(groups, decode, pool, prefetch) if pool is not None  # type: ignore[arg-type]
        else ((group, decode(group)) for group in groups))
    with closing(decoded):  # type: ignore[type-var]
        for group, (x, errors) in decoded:
            top = iter(top_predictions(predictor.run(x), k, predictor.labels) if x is not None else ())
            yield [Row(path, tuple(next(top))) if error is None else Row(path, error=error)
                   for path, error in zip(group, errors, strict=True)]


# ---- remote --------------------------------------------------------------------------------------------------------

def _status(e: grpc.RpcError) -> tuple[str, str]:
    return e.code().name, e.details() or ""  # type: ignore[attr-defined]


class RemoteClassifier:
    """Classify requests for groups of files, with per-file errors and bounded retries of transient failures."""

    # CANCELLED: this client never cancels a call, so it is the server cutting its calls short on its way down.
    TRANSIENT = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"})
    # Codes that can be caused by one file's content; anything else (NOT_FOUND, UNAUTHENTICATED…) is about the job.
    PER_FILE = frozenset({"INVALID_ARGUMENT", "INTERNAL", "UNKNOWN", "DATA_LOSS"})

    def __init__(self, client: Client, model: str, *, version: int = 0, top_k: int = 0, retries: int = 5,
                 backoff_s: float = 0.2, max_request_bytes: int = 32 * 1024 * 1024) -> None:
        self.client, self.model, self.version, self.top_k = client, model, version, top_k
        self.retries, self.backoff_s, self.max_request_bytes = retries, backoff_s, max_request_bytes

    def _call(self, images: list[bytes]) -> list[tuple] | tuple[str, str]:
        """Predictions per image, or (code, details) of a failure that splitting the request may get past."""
        import grpc

        for attempt in range(self.retries + 1):
            try:
                return [tuple(p) for p in self.client.classify(images, top_k=self.top_k, model=self.model,
                                                               version=self.version)]
            except grpc.RpcError as e:
                code, details = _status(e)
                if code in self.PER_FILE:
                    return code, details
                # RESOURCE_EXHAUSTED is a full queue or a request too large: smaller requests help with both.
                if code == "RESOURCE_EXHAUSTED" and (len(images) > 1 or "larger than max" in details):
                    return code, details
                if code not in self.TRANSIENT or attempt == self.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise RemoteError(f"server answered {code}: {details}{tries}") from None
                time.sleep(min(self.backoff_s * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    def _rows(self, paths: Sequence[str], images: list[bytes], unexplained: list[str]) -> list[Row]:
        """Rows for one request's files; files that failed alone without INVALID_ARGUMENT go to ``unexplained``."""
        result = self._call(images)
        if isinstance(result, list):
            return [Row(path, preds) for path, preds in zip(paths, result, strict=True)]
        if len(images) > 1:
            # One bad file fails the whole request: split in halves until the failure has a single file (a few
            # bad files in a batch of 32 cost a handful of extra requests, not 32).
            half = len(images) // 2
            return (self._rows(paths[:half], images[:half], unexplained)
                    + self._rows(paths[half:], images[half:], unexplained))
        code, details = result
        if code == "INVALID_ARGUMENT":  # the message of a local decoding error, prefixed by the server
            return [Row(paths[0], error=re.sub(r"^image 0: ", "", details))]
        unexplained.append(paths[0])
        return [Row(paths[0], error=f"{code}: {details}")]

    def classify(self, paths: Sequence[str]) -> list[Row]:
        """Rows for ``paths`` in order: read errors locally, the rest in requests of at most ``max_request_bytes``."""
        rows: dict[str, Row] = {}
        request: list[tuple[str, bytes]] = []
        size = 0

        def send() -> None:
            if not request:
                return
            unexplained: list[str] = []
            for row in self._rows([p for p, _ in request], [b for _, b in request], unexplained):
                rows[row.path] = row
            # INTERNAL for one odd file is that file's error row (as an exception is in local mode); INTERNAL for
            # every file of a group is a broken server, and error rows would wrongly mark them all as done.
            if len(request) > 1 and len(unexplained) == len(request):
                raise RemoteError(f"server failed every file of a group of {len(request)}: "
                                  f"{rows[unexplained[0]].error}")
            request.clear()

        for path in paths:
            data = read_file(path)
            if isinstance(data, str):
                rows[path] = Row(path, error=data)
                continue
            if request and size + len(data) > self.max_request_bytes:
                send()
                size = 0
            request.append((path, data))
            size += len(data)
        send()
        return [rows[p] for p in paths]


def classify_remote(remote: RemoteClassifier, paths: Iterable[str], *, batch_size: int = 32,
                    in_flight: int = 4) -> Iterator[list[Row]]:
    """Rows for ``paths``, one list per request group, in input order, with ``in_flight`` requests outstanding."""
    if batch_size < 1 or in_flight < 1:
        raise ValueError(f"batch_size and in_flight must be >= 1, got {batch_size} and {in_flight}")
    with ThreadPoolExecutor(in_flight, thread_name_prefix="batch-request") as pool, \
            closing(ordered(chunks(paths, batch_size), remote.classify, pool, in_flight + 1)) as results:
        for _, rows in results:
            yield rows  # type: ignore[misc]
