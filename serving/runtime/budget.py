"""One budget for the bytes of requests in flight, both transports together.

A request holds part of the budget from the moment its size is known until it is answered: an HTTP request its
declared ``Content-Length`` before any of its body is read (a chunked body grows its share as it arrives), a gRPC
message its serialized size when grpc hands it to the server. A request that would take the total past the limit is
refused at once with :class:`~serving.errors.Overloaded` (HTTP 429 with ``Retry-After``, gRPC RESOURCE_EXHAUSTED),
so however many connections clients open, request bytes held by the server stay under ``--max-inflight-mb``. The
composition root builds one :class:`InflightBudget` and hands it to both front ends.

The default limit is :func:`default_limit_bytes`: a quarter of the memory this process may use (the cgroup's limit
when a container sets one, else physical memory), at least one request of ``--max-message-mb`` and at most
``MAX_DEFAULT_BYTES``. A quarter, because a request's bytes are held about twice while it is handled (the bytes as
received and the message or tensor parsed from them), which keeps requests within half the memory; the rest is the
models', the decoded images' and the answers'.

Not thread-safe, and need not be: both front ends run on one event loop, and only they take and release.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from serving.config import ServerConfig
from serving.errors import Overloaded

MIB = 1 << 20
# 64 requests of the default 64 MiB limit: far more than a server computes before their deadlines pass. A bound, so
# that a large machine's default is not tens of GiB of requests waiting for CPU.
MAX_DEFAULT_BYTES = 4 << 30
# cgroup v2, then v1: the memory limit a container runtime set for this process's group ("max" or a huge number: none)
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
TRANSPORTS = ("grpc", "http")


def memory_bytes(cgroup_limits: tuple[Path, ...] = CGROUP_LIMITS) -> int:
    """The memory this process may use: physical memory, or its cgroup's limit when that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in cgroup_limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(physical, int(text))
    return physical


def default_limit_bytes(max_message_bytes: int, memory: int | None = None) -> int:
    """``--max-inflight-mb``'s default: a quarter of ``memory`` (this process's, when None), rounded down to whole MiB,
    within [``max_message_bytes``, ``MAX_DEFAULT_BYTES``] (the lower bound wins: one largest request must fit)."""
    quarter = (memory_bytes() if memory is None else memory) // 4 // MIB * MIB
    return max(max_message_bytes, min(quarter, MAX_DEFAULT_BYTES))


def _mib(n: int) -> str:
    return f"{n / MIB:.1f}"


class InflightBudget:
    """Bytes of requests in flight against one limit; ``take`` a :class:`Hold` per request, release it when done."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("the in-flight budget must be at least one byte")
        self.limit = limit_bytes
        self.held = 0
        self._held_by = dict.fromkeys(TRANSPORTS, 0)

    @classmethod
    def for_config(cls, config: ServerConfig) -> InflightBudget:
        """The budget ``--max-inflight-mb`` sets, or the default for this machine when it is not set."""
        if config.max_inflight_mb is not None:
            return cls(config.max_inflight_mb * MIB)
        return cls(default_limit_bytes(config.max_message_bytes))

    @property
    def limit_mb(self) -> float:
        return self.limit / MIB

    def held_by(self, transport: str) -> int:
        return self._held_by[transport]

    def publish(self, gauge: Any) -> None:
        """Make ``gauge`` (labelled by transport: ``serving_inflight_request_bytes``) show what each transport holds,
        read when it is scraped, so that requests pay nothing for it."""
        for transport in TRANSPORTS:
            gauge.labels(transport).set_function(functools.partial(self.held_by, transport))

    def take(self, size: int, transport: str) -> Hold:
        """A hold of ``size`` bytes for one request arriving over ``transport`` (one of ``TRANSPORTS``);
        ``Overloaded`` when they do not fit now."""
        hold = Hold(self, transport)
        hold.cover(size)
        return hold

    def _refusal(self, size: int) -> Overloaded:
        # Without the varying total: the same request gets the same words, which clients and tests can match.
        return Overloaded(f"server busy: this request's {_mib(size)} MiB would take the requests in flight past the "
                          f"{self.limit_mb:g} MiB limit (--max-inflight-mb); retry later")

    def _add(self, transport: str, size: int) -> None:
        self.held += size
        self._held_by[transport] += size


class Hold:
    """What one request holds of the budget: grows as its body arrives (``cover``), released once (``release``, or
    the end of a ``with`` block)."""

    __slots__ = ("_budget", "size", "transport")

    def __init__(self, budget: InflightBudget, transport: str) -> None:
        self._budget: InflightBudget | None = budget
        self.transport = transport
        self.size = 0

    def cover(self, total: int) -> None:
        """Hold ``total`` bytes in all (no change when it holds that much already); ``Overloaded``, holding what it
        held before, when the difference does not fit."""
        budget = self._budget
        if budget is None:
            raise RuntimeError("this hold was released: a request's bytes are counted only while it is handled")
        more = total - self.size
        if more <= 0:
            return
        if budget.held + more > budget.limit:
            raise budget._refusal(total)
        budget._add(self.transport, more)
        self.size = total

    def release(self) -> None:
        """Give the bytes back; again: nothing."""
        budget, self._budget = self._budget, None
        if budget is not None and self.size:
            budget._add(self.transport, -self.size)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
