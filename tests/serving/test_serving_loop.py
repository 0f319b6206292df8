"""The event loop's own figures (serving.runtime.loop_lag) and the steps that leave it (serving.runtime.offload)."""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

from serving.runtime import loop_lag, offload


def _burn(seconds: float) -> None:
    """Hold the CPU (and the loop, when called on it) for ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_cpu_step_on_the_loop_is_seen_as_lag_and_as_the_loop_threads_cpu() -> None:
    registry = CollectorRegistry()
    lag = Histogram("lag", "", buckets=loop_lag.BUCKETS, registry=registry)
    cpu = Histogram("cpu", "", buckets=loop_lag.BUCKETS, registry=registry)
    longest = Gauge("longest", "", registry=registry)
    monitor = loop_lag.LoopLag(lag, longest, cpu)

    async def main() -> None:
        monitor.start()
        await asyncio.sleep(0.05)
        _burn(0.08)  # one step of 80 ms of CPU on the loop
        await asyncio.sleep(0.05)
        await monitor.stop()

    asyncio.run(main())
    assert monitor.longest >= 0.07
    assert registry.get_sample_value("longest") == monitor.longest
    # the window that held the step: over 50 ms of lag, and over 50 ms of the loop thread's CPU
    assert registry.get_sample_value("lag_bucket", {"le": "0.05"}) < registry.get_sample_value("lag_count")
    assert registry.get_sample_value("cpu_bucket", {"le": "0.05"}) < registry.get_sample_value("cpu_count")


def test_a_loop_kept_from_running_shows_lag_without_cpu() -> None:
    """The loop thread blocked (here in sleep, as when another thread holds the GIL or the cores are taken): late
    timers, but no CPU step of the loop's own."""
    registry = CollectorRegistry()
    lag = Histogram("lag", "", buckets=loop_lag.BUCKETS, registry=registry)
    cpu = Histogram("cpu", "", buckets=loop_lag.BUCKETS, registry=registry)
    monitor = loop_lag.LoopLag(lag, None, cpu)

    async def main() -> None:
        monitor.start()
        await asyncio.sleep(0.03)
        time.sleep(0.08)
        await asyncio.sleep(0.03)
        await monitor.stop()

    asyncio.run(main())
    assert registry.get_sample_value("lag_bucket", {"le": "0.05"}) < registry.get_sample_value("lag_count")
    assert registry.get_sample_value("cpu_bucket", {"le": "0.05"}) == registry.get_sample_value("cpu_count")


def test_large_steps_leave_the_loop_and_small_ones_stay() -> None:
    async def main() -> tuple[str, str]:
        small = await offload.step(lambda: threading.current_thread().name, items=offload.OFF_LOOP_ITEMS)
        large = await offload.step(lambda: threading.current_thread().name, items=offload.OFF_LOOP_ITEMS + 1)
        return small, large

    small, large = asyncio.run(main())
    assert small == threading.main_thread().name
    assert large != threading.main_thread().name
