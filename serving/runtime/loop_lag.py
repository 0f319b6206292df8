"""How long the event loop was held by one step: the figure that says whether one request can stall every other.

Both front ends and the data plane's awaits share one asyncio loop, so a CPU step on it (parsing a body, encoding an
answer) delays every connection by its length. :class:`LoopLag` wakes every ``interval`` seconds and records how late
it woke (``serving_event_loop_lag_seconds``, and the longest since the start in ``…_lag_max_seconds``): what every
client waited. A late timer has two causes, and the loop thread's own CPU time over the same window tells them apart
(``serving_event_loop_step_cpu_seconds``): a CPU step of the server's code on the loop (parsing a body, encoding an
answer: CPU ≈ lag), or a loop thread that could not run — the GIL held by another thread, or the cores taken by
onnxruntime's threads and other processes (CPU ≪ lag). The ``loop`` benchmark family sends the largest inputs the
limits allow and reads both. Cost: a timer every 10 ms, about 20 µs of loop time each (0.2 % of a core).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Gauge, Histogram

INTERVAL_S = 0.010
BUCKETS = (0.001, 0.0025, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0, 2.5, 5.0)


class LoopLag:
    def __init__(self, histogram: Histogram | None, maximum: Gauge | None, step_cpu: Histogram | None = None,
                 interval: float = INTERVAL_S) -> None:
        self.histogram, self.maximum, self.step_cpu, self.interval = histogram, maximum, step_cpu, interval
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def record(self, lag: float, cpu: float = 0.0) -> None:
        """One tick: how late the timer ran, and the loop thread's CPU time in the window (timer plus lag)."""
        if self.step_cpu is not None:
            self.step_cpu.observe(cpu)
        if self.histogram is not None:
            self.histogram.observe(lag)
        if lag > self.longest:
            self.longest = lag
            if self.maximum is not None:
                self.maximum.set(lag)

    async def _watch(self) -> None:
        while True:  # runs on the loop's thread: thread_time() is the loop thread's CPU time
            due, cpu = time.perf_counter() + self.interval, time.thread_time()
            await asyncio.sleep(self.interval)
            self.record(max(0.0, time.perf_counter() - due), time.thread_time() - cpu)
