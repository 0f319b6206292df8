"""Soak: several clients send a sustained mix of valid and invalid requests through both APIs for ``SOAK_SECONDS``
(25 in ``make test``; ``make soak`` runs 600). Every answer must be the expected one (zero unexpected errors) and
the server's resident memory must stay flat: the least-squares line through VmRSS over time, after a warm-up, may
rise at most a stated allowance over the fitted window (an allocator step plus a rate per minute,
:mod:`tests.reliability.memory`), one rule for the short run and the long one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract.tensors import encode_bytes_elements
from serving.errors import InvalidInput
from serving.runtime.predictor import Predictor
from tests.reliability.memory import Allowance
from tests.support.hostile import bombs, mutate, seed_images
from tests.support.processes import RssSampler, slope_kb_per_min
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess, call, classify_request

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "25"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "4"))
CONCURRENT_WARMUP_S = 5.0  # the soak's load before the sampled run
WARMUP_FRACTION = 0.2  # RSS samples of the first fifth are not fitted: arenas and caches fill up there
# Flat memory, one rule for every length: the least-squares line through the fitted window's samples may rise 4 MiB
# (an allocator step: a 20 s window saw steps of up to 1.8 MiB, and a step in the middle of the window fits as a rise
# of 1.5 times its height) plus 512 KiB per minute. As a slope: 12.8 MiB/min over the 20 s window of `make test` (a
# leak of about 700 bytes per request at the ~300 requests/s of 2 busy cores), 1 MiB/min over the 8 minutes of
# `make soak` (about 60 bytes per request at that rate; 600 s measured +43 KiB/min, 150 s +72 KiB/min).
SOAK_GROWTH = Allowance(4 * 1024, 512, "minute")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 300)]

Check = Callable[[], str]  # sends one request, returns "" when the answer is the expected one, else what was wrong


def build_checks(server: ServerProcess, digits: Predictor, rgb: Predictor, seed: int) -> list[tuple[str, Check]]:
    """Request kinds with their expected answers, computed in-process before the soak starts."""
    rng = np.random.default_rng(seed)
    images = list(seed_images().values())
    top1 = {p: int(np.argmax(digits.run(digits.preprocess(p)[None])[0])) for p in images}
    rgb_top1 = {p: int(np.argmax(rgb.run(rgb.preprocess(p)[None])[0])) for p in images}
    tensors = [rng.standard_normal((2, 1, 28, 28)).astype(np.float32) for _ in range(4)]
    logits = [digits.run(t) for t in tensors]
    invalid = []
    for i in range(40):  # damaged files the in-process decoder refuses, with the exact message
        _, payload = mutate(images[i % len(images)], rng)
        try:
            digits.preprocess(payload)
        except InvalidInput as e:
            invalid.append((payload, f"image 0: {e}"))
    bomb = bombs()["bomb.png"]
    counter = iter(range(10**12))
    c, i = server.classifier, server.inference

    def pick(seq: list) -> object:
        return seq[next(counter) % len(seq)]

    def classify_digits() -> str:
        payload = pick(images)
        code, details, r = call(lambda: c.Classify(classify_request(payload), timeout=30))
        if code != grpc.StatusCode.OK:
            return f"{code.name} {details}"
        return "" if r.results[0].predictions[0].index == top1[payload] else "wrong digits top-1"

    def classify_rgb() -> str:
        payload = pick(images)
        code, details, r = call(lambda: c.Classify(classify_request(payload, model="rgb"), timeout=30))
        if code != grpc.StatusCode.OK:
            return f"{code.name} {details}"
        return "" if r.results[0].predictions[0].index == rgb_top1[payload] else "wrong rgb top-1"

    def infer_fp32() -> str:
        k = next(counter) % len(tensors)
        tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2, 1, 28, 28])
        request = kserve_pb2.ModelInferRequest(model_name="digits", inputs=[tensor],
                                               raw_input_contents=[tensors[k].tobytes()])
        code, details, r = call(lambda: i.ModelInfer(request, timeout=30))
        if code != grpc.StatusCode.OK:
            return f"{code.name} {details}"
        got = np.frombuffer(r.raw_output_contents[0], "<f4").reshape(2, 10)
        return "" if np.allclose(got, logits[k], atol=1e-4) else "wrong logits"

    def infer_bytes() -> str:
        payload = pick(images)
        tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES", shape=[1])
        request = kserve_pb2.ModelInferRequest(model_name="digits", inputs=[tensor],
                                               raw_input_contents=[encode_bytes_elements([payload])])
        code, details, r = call(lambda: i.ModelInfer(request, timeout=30))
        if code != grpc.StatusCode.OK:
            return f"{code.name} {details}"
        got = int(np.argmax(np.frombuffer(r.raw_output_contents[0], "<f4")))
        return "" if got == top1[payload] else "wrong BYTES top-1"

    def expect(code: grpc.StatusCode, message: str, rpc: Callable[[], object]) -> str:
        got, details, _ = call(rpc)
        return "" if (got, details) == (code, message) else f"{got.name} {details!r}, expected {message!r}"

    def bad_image() -> str:
        payload, message = pick(invalid)
        return expect(grpc.StatusCode.INVALID_ARGUMENT, message,
                      lambda: c.Classify(classify_request(payload), timeout=30))

    def bad_tensor() -> str:
        image = ic_pb2.Image(tensor=ic_pb2.Tensor(shape=[3, 28, 28], data=b"\0" * (4 * 3 * 28 * 28)))
        return expect(grpc.StatusCode.INVALID_ARGUMENT, "image 0: tensor shape must be [1, 28, 28] (C, H, W), got "
                      "[3, 28, 28]", lambda: c.Classify(ic_pb2.ClassifyRequest(model="digits", images=[image]),
                                                        timeout=30))

    def unknown_model() -> str:
        return expect(grpc.StatusCode.NOT_FOUND, "model 'nope' not found (this server has: digits, rgb)",
                      lambda: c.Classify(classify_request(images[0], model="nope"), timeout=30))

    def bomb_image() -> str:
        return expect(grpc.StatusCode.INVALID_ARGUMENT,
                      "image 0: image is 10000000000 pixels, more than the limit of 40000000",
                      lambda: c.Classify(classify_request(bomb), timeout=30))

    def stream() -> str:
        messages = [ic_pb2.ClassifyRequest(request_id=str(n), model="digits", images=[ic_pb2.Image(encoded=p)])
                    for n, p in enumerate(images[:3])]
        messages.append(ic_pb2.ClassifyRequest(request_id="bad", model="digits",
                                               images=[ic_pb2.Image(encoded=invalid[0][0])]))
        code, details, answers = call(lambda: list(c.ClassifyStream(iter(messages), timeout=30)))
        if code != grpc.StatusCode.OK:
            return f"stream {code.name} {details}"
        by_id = {a.request_id: a for a in answers}
        if by_id["bad"].error.message != invalid[0][1]:
            return f"stream error {by_id['bad'].error.message!r}"
        ok = all(by_id[str(n)].response.results[0].predictions[0].index == top1[p] for n, p in enumerate(images[:3]))
        return "" if ok else "wrong stream answer"

    return [("classify", classify_digits), ("classify", classify_digits), ("classify-rgb", classify_rgb),
            ("infer-fp32", infer_fp32), ("infer-bytes", infer_bytes), ("bad-image", bad_image),
            ("bad-tensor", bad_tensor), ("unknown-model", unknown_model), ("bomb", bomb_image), ("stream", stream)]


@pytest.mark.parametrize("seconds", [SOAK_SECONDS], ids=lambda s: f"{s:.0f}s")
def test_soak_mixed_load_with_flat_memory(repository: Repo, digits: Predictor, rgb: Predictor, seconds: float,
                                          figures: dict[str, object]) -> None:
    server = ServerProcess(repository.path, "--max-queue", "64", "--max-queue-delay-ms", "2")
    try:
        checks = [build_checks(server, digits, rgb, seed) for seed in range(CLIENTS)]
        for _, check in checks[0] * 20:  # warm-up of every kind
            check()
        counts: Counter[str] = Counter()
        unexpected: list[str] = []
        lock = threading.Lock()

        def client(mine: list[tuple[str, Check]], stop_at: float) -> None:
            n = 0
            while time.monotonic() < stop_at and len(unexpected) < 20:
                kind, check = mine[n % len(mine)]
                n += 1
                problem = check()
                with lock:
                    counts[kind] += 1
                    if problem:
                        unexpected.append(f"{kind}: {problem}")

        def run_clients(duration: float) -> None:
            stop_at = time.monotonic() + duration
            threads = [threading.Thread(target=client, args=(mine, stop_at)) for mine in checks]
            for t in threads:
                t.start()
            for t in threads:
                t.join(duration + 120)

        # The same load for a few seconds before sampling: concurrent batches of every size reach every model
        # instance, whose onnxruntime arena keeps the buffers of the largest it ran (two instances, two arenas).
        run_clients(CONCURRENT_WARMUP_S)
        counts.clear()
        with RssSampler(server.proc.pid, period=0.5) as rss:
            run_clients(seconds)
        assert server.alive()
        fitted = [(t, kb) for t, kb in rss.samples if t >= WARMUP_FRACTION * seconds]
        slope = slope_kb_per_min(fitted)
        minutes = (fitted[-1][0] - fitted[0][0]) / 60
        bound = SOAK_GROWTH.allowed_kb(minutes) / minutes  # KiB/min
        total = sum(counts.values())
        first, last = fitted[0][1], fitted[-1][1]
        figures[f"soak ({seconds:.0f} s, {CLIENTS} clients)"] = (
            f"{total} requests ({total / seconds:.0f}/s) {dict(counts)}; unexpected answers {len(unexpected)}")
        figures["soak: server RSS"] = (
            f"slope {slope:+.0f} KiB/min by least squares over {len(fitted)} samples after a "
            f"{WARMUP_FRACTION * seconds:.0f} s warm-up (bound {bound:.0f}: {SOAK_GROWTH} over {minutes:.1f} min); "
            f"{first / 1024:.1f} → {last / 1024:.1f} MiB, peak {rss.peak / 1024:.1f} MiB")
        assert not unexpected, unexpected[:5]
        # Every kind of request was sent, by every client (how many per second is a figure, not a bound).
        assert set(counts) == {kind for kind, _ in checks[0]}
        assert total >= CLIENTS * len(checks[0])
        assert len(fitted) >= 10
        assert slope < bound, (f"RSS rose {slope * minutes / 1024:.1f} MiB over {minutes:.1f} min by least squares "
                               f"(allowed {SOAK_GROWTH}, {bound:.0f} KiB/min here)")
        errors = server.entries(lambda e: e.get("level") in ("error", "critical")
                                and str(e.get("logger", "")).startswith("serving"))
        assert not errors, errors[:3]
    finally:
        assert server.stop() == 0
