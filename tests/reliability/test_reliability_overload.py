"""Overload: many more concurrent clients than the server admits. The excess is refused with RESOURCE_EXHAUSTED
before any decoding; what is accepted completes correctly; memory stays bounded; the server answers again when the
load drops. Deadlines shorter than the queue wait give DEADLINE_EXCEEDED and free their queue slot.

Admission (serving.runtime.dataplane): a model handles at most ``--max-queue + --max-batch`` requests at once;
here 4 + 4 = 8 against 64 clients that resend as soon as they are answered.

How fast refusals and recovery are is reported among the reliability figures, not asserted: on a loaded two-core
machine any wall-clock bound is a coin toss (speed targets are the benchmarks' business).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.contract.prediction import softmax
from serving.runtime.predictor import Predictor
from tests.reliability.memory import Allowance
from tests.support.hostile import seed_images
from tests.support.processes import RssSampler, settled_rss_kb
from tests.support.repositories import Repo
from tests.support.servers import (
    ServerProcess,
    ServerThread,
    base_config,
    call,
    classify_request,
    sample,
    total,
    wait_until,
)

pytestmark = pytest.mark.slow

CLIENTS = 64
MAX_QUEUE, MAX_BATCH = 4, 4
OVERLOAD_SECONDS = float(os.environ.get("OVERLOAD_SECONDS", "4"))
# A refusal costs the server a lookup and a counter: its answer time is the event loop's turnaround, measured end to
# end by one Python client process driving 64 calls, on two cores shared with the server and with whatever else runs
# (typical here: p50 25–45 ms, p99 35–300 ms; reported, not asserted). Without admission control the excess would
# wait for decoding and the batch queue instead.
# Peak RSS over the settled baseline while overloaded: 32 MiB for the requests in flight (admitted, and 64 clients'
# being read or refused), which does not depend on how long the overload lasts, plus 512 KiB per minute of it.
OVERLOAD_GROWTH = Allowance(32 * 1024, 512, "minute")
REFUSED_STREAM = re.compile(r"RST_STREAM with error code 7\b")
# The clients share one address: one client, which fair share stops short of the limit (serving.runtime.fairshare).
QUEUE_FULL = re.compile(r"^model 'digits': queue (full \(\d+ (requests waiting|images in progress)\)|nearly full "
                        r"\(\d+ of 8 images in progress\) and this client holds \d+, more than its share of \d+ while "
                        r"1 client holds images); retry later$")


@pytest.fixture(scope="module")
def server(repository: Repo) -> Iterator[ServerProcess]:
    process = ServerProcess(repository.path, "--models", "digits", "--max-queue", str(MAX_QUEUE), "--max-batch",
                            str(MAX_BATCH), "--max-queue-delay-ms", "2")
    yield process
    process.stop()


def expected_top3(digits: Predictor, payload: bytes) -> list[tuple[int, float]]:
    probs = softmax(digits.run(digits.preprocess(payload)[None]))[0]
    return [(int(i), float(probs[i])) for i in np.argsort(-probs, kind="stable")[:3]]


async def overload(address: str, payloads: list[bytes], seconds: float) -> list[tuple[str, float, str, list]]:
    """CLIENTS workers on 4 channels, each resending as soon as it has an answer, for ``seconds``."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    stubs = [ic_grpc.ImageClassifierStub(c) for c in channels]
    results: list[tuple[str, float, str, list]] = []
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        stub = stubs[n % len(stubs)]
        i = n
        while time.perf_counter() < stop_at:
            which = i % len(payloads)
            i += 1
            started = time.perf_counter()
            try:
                response = await stub.Classify(classify_request(payloads[which]), timeout=20)
                preds = [(p.index, p.probability) for p in response.results[0].predictions]
                results.append(("OK", time.perf_counter() - started, str(which), preds))
            except grpc.aio.AioRpcError as e:
                results.append((e.code().name, time.perf_counter() - started, e.details() or "", []))

    await asyncio.gather(*(worker(n) for n in range(CLIENTS)))
    for channel in channels:
        await channel.close()
    return results


def test_overload_is_refused_and_recovers(server: ServerProcess, digits: Predictor,
                                          figures: dict[str, object]) -> None:
    payloads = list(seed_images().values())[:4]
    expected = [expected_top3(digits, p) for p in payloads]
    for payload in payloads * 10:  # warm-up
        server.classifier.Classify(classify_request(payload), timeout=10)
    baseline = settled_rss_kb(server.proc.pid)
    with RssSampler(server.proc.pid, 0.1) as rss:
        results = asyncio.run(overload(server.address, payloads, OVERLOAD_SECONDS))
    # Recovery: the very next requests are served.
    recovery = []
    for payload in payloads * 3:
        started = time.perf_counter()
        code, _, _ = call(lambda p=payload: server.classifier.Classify(classify_request(p), timeout=10))
        recovery.append((code, time.perf_counter() - started))

    by_code: dict[str, list[tuple[str, float, str, list]]] = {}
    for r in results:
        by_code.setdefault(r[0], []).append(r)
    ok, refused = by_code.get("OK", []), by_code.get("RESOURCE_EXHAUSTED", [])
    refusal_times = np.array([r[1] for r in refused])
    ok_times = np.array([r[1] for r in ok])
    peak = rss.peak - baseline
    figures["overload: answers"] = (f"{len(results)} requests from {CLIENTS} clients in {OVERLOAD_SECONDS:.0f} s "
                                    f"(admission {MAX_QUEUE}+{MAX_BATCH}): {len(ok)} OK, {len(refused)} "
                                    f"RESOURCE_EXHAUSTED, other {len(results) - len(ok) - len(refused)}")
    if len(refusal_times):
        figures["overload: RESOURCE_EXHAUSTED answer time"] = (
            f"p50 {np.percentile(refusal_times, 50) * 1e3:.1f} ms, p99 {np.percentile(refusal_times, 99) * 1e3:.1f} "
            f"ms, max {refusal_times.max() * 1e3:.1f} ms; accepted p50 {np.percentile(ok_times, 50) * 1e3:.1f} ms")
    allowed = OVERLOAD_GROWTH.allowed_kb(OVERLOAD_SECONDS / 60)
    figures["overload: server RSS"] = (f"peak {peak / 1024:+.1f} MiB over {baseline / 1024:.1f} MiB (allowed "
                                       f"{allowed / 1024:.1f} MiB: {OVERLOAD_GROWTH})")
    figures["overload: recovery"] = (f"first request after the load: {recovery[0][1] * 1e3:.1f} ms, "
                                     f"{recovery[0][0].name}")

    # gRPC's transport may refuse a stream itself when the event loop is behind (RST_STREAM REFUSED_STREAM, code 7:
    # never processed, safe to retry — gRPC's UNAVAILABLE). Rare; reported, and nothing else is allowed.
    unavailable = by_code.pop("UNAVAILABLE", [])
    if other := [r for r in unavailable if not REFUSED_STREAM.search(r[2])]:
        by_code["UNAVAILABLE"] = other
    figures["overload: streams refused by the transport"] = len(unavailable) - len(other)
    assert set(by_code) <= {"OK", "RESOURCE_EXHAUSTED"}, {k: v[:2] for k, v in by_code.items()}
    assert len(ok) >= 20
    # 64 clients against 8 admitted: much of the traffic is excess (how much depends on how fast the one client
    # process resends, so only a floor is asserted).
    assert len(refused) >= 0.1 * len(results)
    assert all(QUEUE_FULL.match(r[2]) for r in refused), refused[:3]
    for _, _, which, preds in ok:  # accepted requests are answered correctly
        want = expected[int(which)]
        assert [i for i, _ in preds] == [i for i, _ in want]
        assert [p for _, p in preds] == pytest.approx([p for _, p in want], abs=1e-5)
    assert peak < allowed
    assert all(code == grpc.StatusCode.OK for code, _ in recovery)
    assert sample(server, "serving_queue_depth", model="digits") == 0
    assert sample(server, "serving_inflight_requests", method="Classify") == 0


def test_deadlines_shorter_than_the_queue_wait_free_their_slot(repository: Repo,
                                                               make_server: Callable[..., ServerThread],
                                                               figures: dict[str, object]) -> None:
    # The queue holds 2; the model's compute thread is held, so queued requests wait for as long as the test wants.
    server = make_server(base_config(repository.path, models=("digits",), max_queue=2))
    batcher = server.model("digits").batcher
    stub = ic_grpc.ImageClassifierStub(grpc.insecure_channel(server.address))
    request = classify_request(seed_images()["seed0.png"])
    with server.held_batch("digits", lambda: stub.Classify.future(request, timeout=30)) as computing:
        started = time.perf_counter()
        short = [stub.Classify.future(request, timeout=0.3) for _ in range(2)]
        wait_until(lambda: batcher.depth == 2, 10, "the two short requests in the queue")
        code, details, _ = call(lambda: stub.Classify(request, timeout=5))
        assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   "model 'digits': queue full (2 requests waiting); retry later")
        for future in short:
            with pytest.raises(grpc.RpcError) as e:
                future.result()
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        expired_after = time.perf_counter() - started
        wait_until(lambda: total(server, "serving_dropped_requests_total") == 2, 10, "both dropped")
        # Their slots are free again while the compute thread is still held: two new requests are accepted.
        assert batcher.depth == 0
        later = [stub.Classify.future(request, timeout=30) for _ in range(2)]
        wait_until(lambda: batcher.depth == 2, 10, "two new requests in the freed slots")
    assert computing.result().results
    assert all(f.result().results for f in later)
    held = len(batcher.instances)  # one held batch per instance
    assert sample(server, "serving_batch_size_sum", model="digits") == held + 2  # the expired ones never ran
    assert sample(server, "serving_queue_depth", model="digits") == 0
    figures["deadlines"] = (f"2 requests with a 0.3 s deadline queued behind a held batch: DEADLINE_EXCEEDED after "
                            f"{expired_after:.2f} s, never computed, their slots reused")


def test_admission_counts_every_request_in_progress(repository: Repo, make_server: Callable[..., ServerThread],
                                                    figures: dict[str, object]) -> None:
    """The data plane refuses the (max_queue + max_batch + 1)-th concurrent request before decoding it."""
    server = make_server(base_config(repository.path, models=("digits",), max_queue=2, max_batch=1,
                                     max_queue_delay_ms=0, decode_workers=1))
    model = server.model("digits")
    assert server.config.max_admitted == 3
    stub = ic_grpc.ImageClassifierStub(grpc.insecure_channel(server.address))
    request = classify_request(seed_images()["seed0.png"])
    with server.hold_compute("digits"):  # accepted requests stay in progress
        held = [stub.Classify.future(request, timeout=30) for _ in range(3)]
        wait_until(lambda: model.active == 3, 10, "three requests admitted")
        started = time.perf_counter()
        code, details, _ = call(lambda: stub.Classify(request, timeout=5))
        figures["admission: refusal with 3 requests held"] = f"{(time.perf_counter() - started) * 1e3:.1f} ms"
        assert (code, details) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   "model 'digits': queue full (3 images in progress); retry later")
        assert not any(f.done() for f in held)  # refused while the three were still held, not after
    assert all(f.result().results for f in held)
    assert model.active == 0
