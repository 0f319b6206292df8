"""Dynamic batching: concurrent requests for one model become one onnxruntime call.

Each request submits its images as an (n, C, H, W) tensor and awaits its own slice of the logits. Each model
instance (Triton's instance_group: an onnxruntime session with its own compute thread; ``--instances``) has one
consumer task. An idle consumer takes requests from the model's one queue until ``max_batch`` images are gathered or
the oldest request has waited ``max_delay_s`` (0: take what is there — requests that arrive while a batch is
computing still form the next batch), concatenates them and runs its instance in its thread, so the event loop keeps
accepting and decoding requests meanwhile, and with several instances the next batch starts while the last one still
computes. The queue is a :class:`~serving.runtime.fairshare.FairQueue`: a batch takes one request of each client in
turn (the ``client`` a request is submitted for), and with ``holdings`` the requests of clients within their fair
share first, in batches of their own; so one client's flood holds another client's request back by about the batch
being computed, not by the flood's queue (``serving.runtime.fairshare``). One client's requests, or all of them when
every request has the same client, go in arrival order.

With no delay configured, two cheap measures still keep batches from collapsing to one image under concurrent load
on a small machine, where the event loop (gRPC's per-call work) is the bottleneck and requests reach the queue one
by one — so that each would otherwise pay for a whole model call, the costliest way to run a small model:
- the consumer lets the event loop make ``DRAIN_PASSES`` passes before it takes a batch: requests that gRPC has
  already read are that close to the queue (their events are dispatched in one pass, their handlers run in the next);
- when requests arrived while the previous batch computed (concurrent load), the consumer waits up to
  ``BUSY_WAIT_S`` more for others. A lone client never triggers this (nothing arrives while its request computes),
  so its latency is unchanged. On the digits model (2 shared cores) the two raised throughput at concurrency 8–16
  by 13–16 % on a quiet machine and by 20–40 % on a busy one, with about a tenth less server CPU per request, and
  left concurrency 1 and 4 as they were (``python -m benchmarks --only server``).

Back-pressure and hygiene:
- the queue holds at most ``max_queue`` requests; one more is refused at once with ``Overloaded``;
- a request whose caller gave up (RPC cancelled, deadline passed) is removed and never computed;
- a request larger than ``max_batch`` runs alone, in one call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.errors import DeadlineExceeded, NotReady, Overloaded
from serving.runtime import tracing
from serving.runtime.fairshare import FairQueue, Holdings
from serving.runtime.metrics import Metrics
from serving.runtime.statistics import RequestTiming, VersionStatistics

log = logging.getLogger(__name__)

DRAIN_PASSES = 2
BUSY_WAIT_S = 0.00025  # 0.1–1 ms tried on digits: 0.5 ms and more slowed concurrency 4 on an idle machine


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float | None          # event-loop time
    timing: RequestTiming | None = None
    enqueued: int = field(default_factory=time.perf_counter_ns)
    queued_at: float = 0.0          # event-loop time
    trace: tracing.RequestTrace | None = None  # the request's, if traced: it gets its queue and compute times
    client: str = ""                # whose turn it waits for (serving.runtime.fairshare)


class Instance:
    """One model instance: a run function (its own onnxruntime session), the thread it runs in, and the batch it is
    computing (answered by ``close()`` if it is cut short)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], thread_name: str) -> None:
        self.run = run
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self.running: list[_Request] = []


class DynamicBatcher:
    def __init__(self, runs: Sequence[Callable[[np.ndarray], np.ndarray]], *, name: str, max_batch: int = 32,
                 max_delay_s: float = 0.0, max_queue: int = 256, metrics: Metrics | None = None,
                 holdings: Holdings | None = None) -> None:
        """``runs``: one function (N, C, H, W) → (N, K) logits per instance, each called from its own thread;
        ``holdings``: the images each client holds in the model, which says whose requests go first (None: turns
        only)."""
        if not runs or max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError(f"need an instance, max_batch >= 1, max_queue >= 1, max_delay_s >= 0; got {len(runs)}, "
                             f"{max_batch}, {max_queue}, {max_delay_s}")
        self.name = name
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.instances = [Instance(run, f"ort-{name}-{i}") for i, run in enumerate(runs)]
        self.holdings = holdings
        self._metrics = metrics
        if metrics is not None:  # label lookups cost a lock and a dict per call: do them once
            self._depth_gauge = metrics.queue_depth.labels(name)
        # The served version's statistics (Triton's extension): each batch that computed is recorded there, and the
        # compute and batch-size histograms with it.
        self.statistics = VersionStatistics(name, metrics)
        self._queue: FairQueue[_Request] = FairQueue()
        self._queued_images = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._busy = False  # requests arrived while the last batch computed: concurrent load

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._serve(instance), name=f"batcher-{self.name}-{i}")
                       for i, instance in enumerate(self.instances)]

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, x: np.ndarray, deadline: float | None = None,
                     timing: RequestTiming | None = None, client: str = "") -> np.ndarray:
        """Queue (n, C, H, W) float32 and wait for its (n, K) logits. ``deadline`` is in event-loop time; ``timing``
        gets the request's time in the queue and its share of the batch's phases; ``client``: whose turn the request
        waits for."""
        loop = asyncio.get_running_loop()
        if self._closed or not self._tasks:
            raise NotReady("server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"model {self.name!r}: queue full ({self.max_queue} requests waiting); retry later")
        if deadline is not None and deadline <= loop.time():
            raise DeadlineExceeded("deadline passed before the request was queued")
        request = _Request(x, loop.create_future(), deadline, timing, queued_at=loop.time(), trace=tracing.current(),
                           client=client)
        self._queue.append(client, request)
        self._queued_images += len(x)
        self._wake.set()
        self._set_depth()
        try:
            return await request.future
        except asyncio.CancelledError:  # the caller gave up (client gone, deadline hit): drop the request at once
            self._dropped(request, "cancelled")
            raise

    def _dropped(self, request: _Request, reason: str) -> None:
        if not self._queue.remove(request.client, request):
            return  # already taken into a batch: its result will be ignored
        self._queued_images -= len(request.x)
        self._set_depth()
        if self._metrics is not None:
            self._metrics.dropped.labels(self.name, reason).inc()

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._depth_gauge.set(len(self._queue))

    async def _wait_for_batch(self) -> None:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        if self.max_delay_s > 0:
            await self._gather(min(r.queued_at for r in self._queue.heads()) + self.max_delay_s)
            return
        for _ in range(DRAIN_PASSES):
            if self._queued_images >= self.max_batch:
                return
            await asyncio.sleep(0)
        if self._busy:
            await self._gather(asyncio.get_running_loop().time() + BUSY_WAIT_S)

    async def _gather(self, until: float) -> None:
        """Wait for more requests until ``until`` (event-loop time) or until ``max_batch`` images are queued."""
        loop = asyncio.get_running_loop()
        while self._queued_images < self.max_batch and (remaining := until - loop.time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break

    def _take(self) -> list[_Request]:
        """The next batch: requests taken in turn, those of clients within their share first and without the others'
        (a batch that starts with them ends when they run out)."""
        now = asyncio.get_running_loop().time()
        batch: list[_Request] = []
        images = 0
        # whose requests go first matters only between clients: one client's are taken in order
        prefer = self.holdings.within_share if self.holdings is not None and self._queue.clients > 1 else None
        preferred = False
        while self._queue:
            client = self._queue.turn(prefer)
            request = self._queue.head(client)
            if request.future.cancelled():  # its caller has not resumed (and dropped it) yet
                self._dropped(request, "cancelled")
                continue
            if request.deadline is not None and request.deadline <= now:
                self._dropped(request, "deadline")
                request.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
                continue
            light = prefer is not None and prefer(client)
            if batch and (images + len(request.x) > self.max_batch or (preferred and not light)):
                break
            if not batch:
                preferred = light
            self._queue.pop(client)
            self._queued_images -= len(request.x)
            batch.append(request)
            images += len(request.x)
        self._set_depth()
        return batch

    async def _serve(self, instance: Instance) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter_ns()
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            stacked = time.perf_counter_ns()
            instance.running = batch
            try:
                logits, infer_ns = await self._compute(loop, instance, x)
            except Exception as e:
                instance.running = []
                log.exception("model %s: batch of %d failed", self.name, len(x))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(RuntimeError(f"inference failed: {type(e).__name__}: {e}"))
                continue
            finally:
                self._busy = bool(self._queue)
            instance.running = []
            received = time.perf_counter_ns()
            offset = 0
            for request in batch:  # the callers resume later, on another pass of the loop: after _record
                n = len(request.x)
                if request.trace is not None:
                    request.trace.batched(request.enqueued, started, received, len(x), len(batch))
                if not request.future.done():
                    request.future.set_result(logits[offset:offset + n])
                offset += n
            self._record(batch, len(x), started, stacked - started, infer_ns, time.perf_counter_ns() - received)

    async def _compute(self, loop: asyncio.AbstractEventLoop, instance: Instance,
                       x: np.ndarray) -> tuple[np.ndarray, int]:
        """One model call in the instance's thread: its logits and its nanoseconds, timed in that thread (the hand-off
        to and from the thread is not the model's time). The thread hands the result back with a single loop
        callback: ``run_in_executor``'s future chaining costs several callbacks and locks per batch, on the busiest
        thread."""
        done: asyncio.Future[tuple[np.ndarray, int]] = loop.create_future()

        def work() -> None:
            started = time.perf_counter_ns()
            try:
                result = instance.run(x)
            except BaseException as e:
                loop.call_soon_threadsafe(_settle, done, None, e)
            else:
                loop.call_soon_threadsafe(_settle, done, (result, time.perf_counter_ns() - started), None)

        instance.executor.submit(work)
        return await done

    def _record(self, batch: list[_Request], rows: int, started: int, input_ns: int, infer_ns: int,
                output_ns: int) -> None:
        """A batch that computed: one execution in the statistics (and the histograms), and each request's share —
        its wait until ``started`` and the whole of the batch's phases, as Triton counts them."""
        self.statistics.executed(rows, input_ns, infer_ns, output_ns)
        for request in batch:
            timing = request.timing
            if timing is not None:
                timing.queue_ns += started - request.enqueued
                timing.input_ns += input_ns
                timing.infer_ns += infer_ns
                timing.output_ns += output_ns

    async def close(self) -> None:
        """Stop the consumers; requests still queued or computing are answered ``NotReady`` (shutdown drains first)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for request in [*(r for i in self.instances for r in i.running), *self._queue]:
            if not request.future.done():
                request.future.set_exception(NotReady("server is shutting down"))
        self._queue.clear()
        self._queued_images = 0
        for instance in self.instances:
            instance.running = []
            instance.executor.shutdown(wait=False)


def _settle(future: asyncio.Future[tuple[np.ndarray, int]], result: tuple[np.ndarray, int] | None,
            error: BaseException | None) -> None:
    if future.done():  # the consumer was cancelled (close) while the model ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
