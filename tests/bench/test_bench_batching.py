"""The batcher changes the benchmarks motivated (serving/batcher.py, no configured delay): requests a loop pass apart
share a call; under concurrent load the consumer waits briefly for more; a lone client never waits."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving import batcher as batcher_module
from serving.batcher import DynamicBatcher


class Model:
    """Row sums, recording each call's batch size; ``gate`` holds a call until released."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)


def sample(value: float) -> np.ndarray:
    return np.full((1, 1, 2, 2), value, dtype=np.float32)


def test_requests_one_loop_pass_apart_share_a_call() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(model, name="m", max_batch=8)
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
    monkeypatch.setattr(batcher_module, "BUSY_WAIT_S", 0.5)  # wide, so that the test does not race the window
    gate = threading.Event()
    model = Model(gate)

    async def main() -> None:
        batcher = DynamicBatcher(model, name="m", max_batch=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(sample(1)))
        await asyncio.sleep(0.05)  # computing, held by the gate
        during = [asyncio.ensure_future(batcher.submit(sample(i))) for i in range(2)]
        await asyncio.sleep(0.05)
        gate.set()
        await first
        late = asyncio.ensure_future(batcher.submit(sample(9)))  # after the call ended, within the wait
        await asyncio.gather(*during, late)
        await batcher.close()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert model.batches == [1, 3]


def test_a_lone_client_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "BUSY_WAIT_S", 5.0)  # would be obvious if a request ever waited for it
    model = Model()

    async def main() -> float:
        batcher = DynamicBatcher(model, name="m", max_batch=8)
        batcher.start()
        started = time.perf_counter()
        for i in range(20):
            await batcher.submit(sample(i))
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    elapsed = asyncio.run(asyncio.wait_for(main(), 30))
    assert model.batches == [1] * 20
    assert elapsed < 2.0
