"""DynamicBatcher on a real event loop, with a NumPy function standing in for the model (the batcher is generic)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from serving.errors import DeadlineExceeded, NotReady, Overloaded
from serving.runtime import batcher as batcher_module
from serving.runtime.batcher import DynamicBatcher
from serving.runtime.metrics import Metrics


class Model:
    """Row sums, recording every batch it was called with; ``gate`` can hold a call until released, and ``entered``
    is set once a call is inside (holding the batcher's compute thread)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 20))


def sample(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, dtype=np.float32)


def test_concurrent_requests_are_batched_and_answered_individually() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher([model], name="m", max_batch=16, max_delay_s=0.2)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(sample(i, n=1 + i % 2)) for i in range(6)))
        finally:
            await batcher.close()

    results = run(main)
    assert model.batches == [9]  # 6 requests, 9 images: one call when the window closed
    for i, logits in enumerate(results):
        np.testing.assert_array_equal(logits, np.full((1 + i % 2, 1), 4.0 * i, dtype=np.float32))


def test_max_batch_splits_calls_in_arrival_order() -> None:
    model = Model()

    async def main() -> None:
        batcher = DynamicBatcher([model], name="m", max_batch=4, max_delay_s=0.05)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(sample(i)) for i in range(10)), batcher.submit(sample(0, n=6)))
        finally:
            await batcher.close()

    run(main)
    assert model.batches == [4, 4, 2, 6]  # a request larger than max_batch runs alone, in one call


def test_without_delay_requests_arriving_during_a_call_form_the_next_batch() -> None:
    gate = threading.Event()
    model = Model(gate)

    async def main() -> None:
        batcher = DynamicBatcher([model], name="m", max_batch=16, max_delay_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.to_thread(model.entered.wait, 5)  # the first call is now blocked in the model
        rest = [asyncio.ensure_future(batcher.submit(sample(i))) for i in range(5)]
        await asyncio.sleep(0)  # one loop pass: the five submits run up to their wait (a yield, not a wait for time)
        assert batcher.depth == 5
        gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    run(main)
    assert model.batches == [1, 5]


def test_full_queue_is_refused_at_once() -> None:
    async def main() -> None:
        batcher = DynamicBatcher([Model()], name="m", max_batch=8, max_delay_s=0.5, max_queue=2)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(sample(i))) for i in range(2)]
        await asyncio.sleep(0)  # one loop pass: both queued
        assert batcher.depth == 2
        with pytest.raises(Overloaded, match=r"model 'm': queue full \(2 requests waiting\)"):
            await batcher.submit(sample(9))
        assert not any(w.done() for w in waiting)  # refused at once, not after the 0.5 s window
        await asyncio.gather(*waiting)
        await batcher.close()

    run(main)


def test_cancelled_and_expired_requests_are_never_computed() -> None:
    model = Model()
    metrics = Metrics()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        batcher = DynamicBatcher([model], name="m", max_batch=8, max_delay_s=0.3, metrics=metrics)
        batcher.start()
        cancelled = asyncio.ensure_future(batcher.submit(sample(1)))
        expiring = asyncio.ensure_future(batcher.submit(sample(2), deadline=loop.time() + 0.05))
        kept = asyncio.ensure_future(batcher.submit(sample(3)))
        await asyncio.sleep(0)  # one loop pass: all three queued
        assert batcher.depth == 3
        cancelled.cancel()
        np.testing.assert_array_equal(await kept, [[12.0]])
        with pytest.raises(DeadlineExceeded, match="deadline passed while the request was queued"):
            await expiring
        with pytest.raises(DeadlineExceeded, match="before the request was queued"):
            await batcher.submit(sample(4), deadline=loop.time() - 1)
        await batcher.close()

    run(main)
    assert model.batches == [1]
    value = metrics.registry.get_sample_value
    assert value("serving_dropped_requests_total", {"model": "m", "reason": "cancelled"}) == 1
    assert value("serving_dropped_requests_total", {"model": "m", "reason": "deadline"}) == 1
    assert value("serving_batch_size_count", {"model": "m"}) == 1


def test_a_failing_model_fails_each_caller_and_keeps_serving() -> None:
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if len(calls) == 1:
            raise ValueError("boom")
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    async def main() -> None:
        batcher = DynamicBatcher([flaky], name="m", max_batch=8, max_delay_s=0.05)
        batcher.start()
        results = await asyncio.gather(batcher.submit(sample(1)), batcher.submit(sample(2)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "inference failed: ValueError: boom" in str(r) for r in results)
        np.testing.assert_array_equal(await batcher.submit(sample(1)), [[4.0]])
        await batcher.close()

    run(main)


def test_close_answers_queued_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        batcher = DynamicBatcher([Model()], name="m", max_batch=8, max_delay_s=5.0)
        batcher.start()
        queued = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.sleep(0)  # one loop pass: queued, inside its 5 s window
        assert batcher.depth == 1
        await batcher.close()
        with pytest.raises(NotReady, match="shutting down"):
            await queued
        with pytest.raises(NotReady, match="shutting down"):
            await batcher.submit(sample(1))

    run(main)


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_queue": 0}, {"max_delay_s": -1.0}])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="max_batch >= 1"):
            DynamicBatcher([Model()], name="m", **kwargs)

    run(main)


# The batcher changes the benchmarks motivated (no configured delay): requests a loop pass apart share a call;
# under concurrent load the consumer waits briefly for more; a lone client never waits.


def test_requests_one_loop_pass_apart_share_a_call() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher([model], name="m", max_batch=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.sleep(0)  # the second request reaches the queue one pass later, as a gRPC handler would
        second = asyncio.ensure_future(batcher.submit(sample(2)))
        try:
            return await asyncio.gather(first, second)
        finally:
            await batcher.close()

    results = asyncio.run(asyncio.wait_for(main(), 10))
    assert model.batches == [2]
    np.testing.assert_array_equal(results[1], [[8.0]])


def test_under_load_the_next_batch_waits_briefly_for_more(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 60 s wait that max_batch (3) ends early: the batch of three can only form if the consumer waited for the
    # late request, and the test cannot race the window.
    monkeypatch.setattr(batcher_module, "BUSY_WAIT_S", 60.0)
    gate = threading.Event()
    model = Model(gate)

    async def main() -> None:
        batcher = DynamicBatcher([model], name="m", max_batch=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.to_thread(model.entered.wait, 5)  # computing, held by the gate
        during = [asyncio.ensure_future(batcher.submit(sample(i))) for i in range(2)]
        await asyncio.sleep(0)  # one loop pass: both queued while the first computes (a yield, not a wait)
        assert batcher.depth == 2
        gate.set()
        await first
        late = asyncio.ensure_future(batcher.submit(sample(9)))  # after the call ended, within the wait
        await asyncio.gather(*during, late)
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert model.batches == [1, 3]


def test_a_lone_client_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 60 s wait: had any of the 20 requests waited for it, the 30 s guard below would fail the test.
    monkeypatch.setattr(batcher_module, "BUSY_WAIT_S", 60.0)
    model = Model()

    async def main() -> None:
        batcher = DynamicBatcher([model], name="m", max_batch=8)
        batcher.start()
        for i in range(20):
            await batcher.submit(sample(i))
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert model.batches == [1] * 20


# Instances (--instances): one queue, one consumer and compute thread per instance.


def test_a_second_instance_computes_while_the_first_is_held() -> None:
    gate = threading.Event()
    first, second = Model(gate), Model()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher([first, second], name="m", max_batch=8)
        batcher.start()
        held = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.to_thread(first.entered.wait, 5)  # instance 0 is busy with the first request
        answered = await batcher.submit(sample(2, n=3))  # answered by instance 1 while instance 0 is still held
        assert not held.done()
        assert (first.batches, second.batches) == ([], [3])
        gate.set()
        results = [await held, answered]
        await batcher.close()
        return results

    results = run(main)
    np.testing.assert_array_equal(results[0], [[4.0]])
    np.testing.assert_array_equal(results[1], [[8.0]] * 3)


def test_close_answers_the_batches_of_every_instance() -> None:
    gates = [threading.Event(), threading.Event()]
    models = [Model(gates[0]), Model(gates[1])]

    async def main() -> None:
        batcher = DynamicBatcher(models, name="m", max_batch=1)
        batcher.start()
        calls = [asyncio.ensure_future(batcher.submit(sample(i))) for i in range(3)]
        for model in models:
            await asyncio.to_thread(model.entered.wait, 5)  # both instances computing, the third request queued
        assert batcher.depth == 1
        await batcher.close()
        for call in calls:
            with pytest.raises(NotReady, match="shutting down"):
                await call
        for gate in gates:
            gate.set()

    run(main)


def test_no_instance_is_refused() -> None:
    with pytest.raises(ValueError, match="need an instance"):
        DynamicBatcher([], name="m")
