"""Fair share on a real server: one token floods a model with valid work while another sends one request at a time.

The server runs with its defaults (fair share on, a model holds 288 images; two model instances, as every server of
this package), tokens naming two clients. The flood (``tests.support.flood``, a process of its own) keeps 32 requests
of 16 digits in flight, 512 images against the 288 a model holds, and resends each as soon as it is answered,
refusals included: gRPC Classify; over HTTP Open Inference infer with a BYTES tensor (a 16-part multipart form is
parsed on the event loop, which is the front end's own cost, not a matter of shares). The light client sends one
digit at a time, first alone (its unloaded p99), then during the flood. Asserted, on each transport: none of its
requests is refused — without fair share (``SERVING_CLIENT_SHARE=0`` in the environment: the server process reads it)
the flood fills the model and they are refused as "queue full". Reported, not asserted (a latency is a benchmark's
figure, and on this 2-core machine the flood's own process and the refusals it draws share the cores with the
server): the light client's p99 during the flood against the issue's bound, max(3 × its unloaded p99, 100 ms), the
median over ``FAIRNESS_REPEATS`` repeats (default 1; the issue asks for 3).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from tests.support.hostile import seed_images
from tests.support.paths import ROOT
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess, call, classify_request, scrape

pytestmark = pytest.mark.slow

REPEATS = int(os.environ.get("FAIRNESS_REPEATS", "1"))
UNLOADED_REQUESTS = 150
FLOOD_SECONDS = 3.0
FLOOD_CONCURRENCY, FLOOD_IMAGES = 32, 16
TOKENS = {"flood": "flood-token-0123456789", "light": "light-token-0123456789"}
BOUND_FLOOR_S = 0.100


@pytest.fixture(scope="module")
def server(repository: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("fairness") / "tokens"
    tokens.write_text("".join(f"{token} {name}\n" for name, token in TOKENS.items()))
    process = ServerProcess(repository.path, "--models", "digits", "--auth-token-file", str(tokens))
    yield process
    process.stop()


class Light:
    """The light client: one classify of one digit at a time, on its own connection; times each answer and keeps
    every one that was not OK."""

    def __init__(self, server: ServerProcess, transport: str) -> None:
        self.image = seed_images()["seed0.png"]
        self.failures: list[str] = []
        if transport == "grpc":
            self.channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = ic_grpc.ImageClassifierStub(self.channel)
            metadata = (("authorization", f"Bearer {TOKENS['light']}"),)
            self.send = lambda: self._grpc(stub, metadata)
        else:
            self.connection = http.client.HTTPConnection("127.0.0.1", int(server.http_port), timeout=30)
            self.send = self._http

    def _grpc(self, stub: ic_grpc.ImageClassifierStub, metadata: tuple) -> str | None:
        code, details, _ = call(lambda: stub.Classify(classify_request(self.image), timeout=30, metadata=metadata))
        return None if code is grpc.StatusCode.OK else f"{code.name}: {details}"

    def _http(self) -> str | None:
        self.connection.request(
            "POST",
            "/v1/models/digits/classify",
            body=self.image,
            headers={"Authorization": f"Bearer {TOKENS['light']}"},
        )
        response = self.connection.getresponse()
        body = response.read()
        return None if response.status == 200 else f"{response.status}: {body[:200]!r}"

    def latencies(self, until: Callable[[int], bool]) -> np.ndarray:
        """Seconds per request, one request after the other, until ``until(requests sent)``."""
        times = []
        while not until(len(times)):
            started = time.perf_counter()
            failure = self.send()
            times.append(time.perf_counter() - started)
            if failure is not None:
                self.failures.append(failure)
        return np.array(times)

    def close(self) -> None:
        (self.channel if hasattr(self, "channel") else self.connection).close()


class Flood:
    """``tests.support.flood`` against the server for as long as the ``with`` block runs; ``answers`` after it."""

    def __init__(self, server: ServerProcess, transport: str) -> None:
        target = server.address if transport == "grpc" else server.http_url
        self.command = [
            sys.executable,
            "-m",
            "tests.support.flood",
            transport,
            target,
            "--token",
            TOKENS["flood"],
            "--concurrency",
            str(FLOOD_CONCURRENCY),
            "--images",
            str(FLOOD_IMAGES),
        ]
        self.answers: dict[str, int] = {}

    def __enter__(self) -> Flood:
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "flooding", f"the flood did not start: {line!r}, exit code {self.proc.poll()}"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate("", timeout=60)  # closing its stdin stops it
        self.answers = json.loads(out.strip().splitlines()[-1])


def _for(seconds: float) -> Callable[[int], bool]:
    until = time.perf_counter() + seconds
    return lambda requests: time.perf_counter() > until


def _p99_ms(times: np.ndarray) -> float:
    return float(np.percentile(times, 99) * 1e3)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_flooding_token_does_not_get_the_other_refused(
    server: ServerProcess, transport: str, figures: dict[str, object]
) -> None:
    light = Light(server, transport)
    try:
        light.latencies(lambda n: n == 20)  # warm-up: connection, first batches
        unloaded, loaded, floods = [], [], []
        for _ in range(REPEATS):
            unloaded.append(_p99_ms(light.latencies(lambda n: n == UNLOADED_REQUESTS)))
            with Flood(server, transport) as flood:
                times = light.latencies(_for(FLOOD_SECONDS))
            loaded.append(_p99_ms(times))
            floods.append(flood.answers)
    finally:
        light.close()

    bound = max(3 * float(np.median(unloaded)), BOUND_FLOOR_S * 1e3)
    figures[f"fair share, {transport}: light client p99"] = (
        f"unloaded {', '.join(f'{v:.1f}' for v in unloaded)} ms; during the flood "
        f"{', '.join(f'{v:.1f}' for v in loaded)} ms (median {np.median(loaded):.1f}, bound {bound:.0f} ms)"
    )
    figures[f"fair share, {transport}: flood answers"] = floods
    assert not light.failures, light.failures[:3]
    refused = "RESOURCE_EXHAUSTED" if transport == "grpc" else "429"
    ok = "OK" if transport == "grpc" else "200"
    for answers in floods:  # a real flood: served, and over its share (the model cannot hold all it sends)
        assert set(answers) <= {ok, refused}, answers
        assert answers.get(ok, 0) > 0, answers
        assert answers.get(refused, 0) > 0, answers

    _check_client_metrics(server)


def _check_client_metrics(server: ServerProcess) -> None:
    """Per-client counts under the token names, nothing held once the flood is over, no address or token as a
    label."""
    samples = scrape(server)
    clients = {dict(labels)["client"] for name, labels in samples if name.startswith("serving_client_")}
    assert clients == {"flood", "light"}, clients
    assert samples[("serving_client_requests_total", (("client", "light"), ("code", "OK")))] > 0
    assert samples[("serving_client_requests_total", (("client", "flood"), ("code", "RESOURCE_EXHAUSTED")))] > 0
    assert samples[("serving_client_admitted_images", (("client", "flood"),))] == 0
    assert samples[("serving_client_admitted_images", (("client", "light"),))] == 0
