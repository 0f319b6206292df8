"""Fair share between clients: one client flooding a model with valid work cannot take it from the others.

A request counts for its client's *identity* (:data:`share_var`, set by the front ends): the token's client when
tokens are on (``serving.runtime.auth``), else the client's address (``serving.runtime.peers``: the peer, or the
address a trusted proxy forwards for). Two places use it:

- **Admission** (:func:`refusal`, called by ``DataPlane.admit``). A model holds at most ``limit`` images
  (``--max-queue`` + ``--max-batch``). The last ``kept`` of them (``--client-share``: a fraction of the limit, a
  quarter by default) are kept for clients within their share: below that line anyone is admitted, first come first
  served, as without fair share; above it a client is admitted only while it holds nothing, or no more than its
  share, ``limit ÷ (clients holding images + 1)``. The + 1 leaves room for a client that has not come yet: a client
  alone stops at the line (or at half the limit, if that is higher), and the next one to arrive finds room at once.
  As more clients hold images each share shrinks, and those above theirs are refused until their requests finish. A
  client that sends one request at a time holds nothing when it sends, so it is admitted whenever the model is not
  full.
- **Batching** (:class:`FairQueue`, the batcher's queue): each client has its own queue, and a batch takes one request
  from each client in turn, round after round, instead of the oldest requests first. Clients within their share
  (:meth:`Holdings.within_share`) go first, in batches of their own: a client that sends a digit at a time while
  another keeps hundreds of images in the model waits for the batch being computed and its own small one, not for
  the flood's queue nor for a batch filled with it. A client alone is served in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Generic, TypeVar

from serving.runtime.auth import ANONYMOUS

# The identity whose share the request being handled counts against (set by the front ends, read by the data plane).
share_var: ContextVar[str] = ContextVar("share", default=ANONYMOUS)

FULL, OVER_SHARE = "full", "over its share"


def kept_images(limit: int, fraction: float) -> int:
    """Images of a model's ``limit`` kept for clients within their share (``--client-share``)."""
    return int(limit * fraction)


def share(limit: int, clients: int) -> int:
    """One client's share of ``limit`` images while ``clients`` clients hold some (room is left for one more)."""
    return limit // (clients + 1)


class Holdings(dict[str, int]):
    """The images each client holds in one model: admitted and not finished (``DataPlane.admit`` keeps it); a client
    holding none is not listed. ``limit``: the images the model holds at most."""

    def __init__(self, limit: int = 0) -> None:
        super().__init__()
        self.limit = limit

    def add(self, client: str, images: int) -> None:
        self[client] = self.get(client, 0) + images

    def remove(self, client: str, images: int) -> None:
        left = self[client] - images
        if left:
            self[client] = left
        else:
            del self[client]

    def within_share(self, client: str) -> bool:
        """Whether ``client`` holds no more than its share (a client holding nothing does)."""
        return self.get(client, 0) <= share(self.limit, len(self))


def refusal(*, limit: int, kept: int, active: int, held: int, clients: int, images: int) -> str | None:
    """Why a request of ``images`` images is refused (:data:`FULL`, :data:`OVER_SHARE`), or None to admit it.

    ``active``: images the model holds; ``held``: of those, the client's; ``clients``: clients holding images (the
    requesting one among them if it holds any)."""
    if active + images > limit:
        return FULL
    if active + images <= limit - kept or held == 0 or held + images <= share(limit, clients):
        return None
    return OVER_SHARE


T = TypeVar("T")


class FairQueue(Generic[T]):
    """A queue per client, taken in turn: :meth:`turn` is the client whose turn it is (the first that ``prefer``
    approves of, if any), :meth:`head` its oldest item, and :meth:`pop` takes that item and passes the turn on. With
    one client (or every item under one key) it is a FIFO queue."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()  # the clients with items, the one whose turn it is first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def clients(self) -> int:
        """Clients with items queued."""
        return len(self._turns)

    def __iter__(self) -> Iterator[T]:
        for queue in self._queues.values():
            yield from queue

    def append(self, client: str, item: T) -> None:
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._turns.append(client)  # a new client's turn comes after those already waiting
        queue.append(item)
        self._size += 1

    def heads(self) -> Iterator[T]:
        """Each client's oldest item."""
        for queue in self._queues.values():
            yield queue[0]

    def turn(self, prefer: Callable[[str], bool] | None = None) -> str:
        """The client whose turn it is: the first in turn that ``prefer`` approves of, or if none does (or no
        ``prefer``) the first in turn (``IndexError`` when empty)."""
        if prefer is not None and len(self._turns) > 1:
            for client in self._turns:
                if prefer(client):
                    return client
        return self._turns[0]

    def head(self, client: str) -> T:
        """``client``'s oldest item."""
        return self._queues[client][0]

    def pop(self, client: str) -> T:
        """Take ``client``'s oldest item; its next turn comes after every other client's."""
        queue = self._queues[client]
        item = queue.popleft()
        self._size -= 1
        if client == self._turns[0]:
            self._turns.popleft()
        else:
            self._turns.remove(client)
        if queue:
            self._turns.append(client)
        else:
            del self._queues[client]
        return item

    def remove(self, client: str, item: T) -> bool:
        """Take ``item`` out wherever it is in ``client``'s queue; False if it is not there."""
        queue = self._queues.get(client)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self._size -= 1
        if not queue:
            del self._queues[client]
            self._turns.remove(client)
        return True

    def clear(self) -> None:
        self._queues.clear()
        self._turns.clear()
        self._size = 0
