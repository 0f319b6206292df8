"""The HTTP front end against bad input and bad clients, on a real server process.

- a bounded random-mutation run over valid request bodies (KServe JSON, binary-extension bodies, raw and multipart
  classify bodies, hostile image files inside them): every answer is a 4xx with a one-line JSON error or a 200, never
  a 5xx, and the process logs no error of its own;
- bad clients: silent connections, slow request headers and bodies, and more connections than allowed are closed
  within the configured time while well-behaved clients keep being answered.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.support.hostile import bombs, bounded, mutate, seed_images
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess, wait_until

pytestmark = pytest.mark.slow

FUZZ_MUTATIONS = int(os.environ.get("FUZZ_MUTATIONS", "4000")) // 4
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "15"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20240611"))
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(repository: Repo) -> Iterator[ServerProcess]:
    process = ServerProcess(repository.path, "--models", "digits", "--max-message-mb", "4", "--max-pixels",
                            "4000000", "--http-timeout-s", str(TIMEOUT_S), "--max-http-connections", "8")
    yield process
    assert process.stop() == 0


def _bodies(rng: np.random.Generator) -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers): valid requests, then mutated; forever."""
    images = [*seed_images().values(), *bombs().values()]
    x = rng.random((1, 1, 28, 28), dtype=np.float32)
    json_fp32 = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                        "data": x.ravel().tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    while True:
        image = images[int(rng.integers(len(images)))]
        b64 = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                      "parameters": {"content_type": "base64"},
                                      "data": [base64.b64encode(image).decode()]}]}).encode()
        boundary = "fuzzboundary"
        multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
                     ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
        cases = [
            ("json", "/v2/models/digits/infer", json_fp32, {}),
            ("binary", "/v2/models/digits/infer", header + x.tobytes(),
             {"Inference-Header-Content-Length": str(len(header))}),
            ("base64", "/v2/models/digits/infer", b64, {}),
            ("raw", "/v1/models/digits/classify", image, {"Content-Type": "image/png"}),
            ("multipart", "/v1/models/digits/classify", multipart,
             {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
        ]
        what, path, body, headers = cases[int(rng.integers(len(cases)))]
        if rng.random() < 0.8:
            kind, body = mutate(body, rng)
            what = f"{what}/{kind}"
        yield what, path, body, headers


def test_mutated_bodies_get_4xx_never_5xx(server: ServerProcess, figures: dict[str, object]) -> None:
    rng = np.random.default_rng(FUZZ_SEED)
    statuses: Counter[int] = Counter()
    bodies = _bodies(rng)
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        for _ in bounded(FUZZ_MUTATIONS, FUZZ_SECONDS):
            what, path, body, headers = next(bodies)
            answer = client.post(path, content=body, headers=headers)
            statuses[answer.status_code] += 1
            assert answer.status_code < 500, (what, answer.status_code, answer.text)
            if answer.status_code != 200:
                error = answer.json()["error"]
                assert error, what
                assert "\n" not in error, (what, error)
    figures["http fuzz: answers by status"] = dict(statuses)
    assert statuses[200]
    assert sum(statuses.values()) > 50
    assert server.alive()
    assert not server.entries(lambda e: e.get("level") == "ERROR"), server.entries(lambda e: e.get("level") == "ERROR")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reads until EOF, discarding any answer)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.http_port)), timeout=5)


def _answers(server: ServerProcess) -> bool:
    return httpx.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 200


def test_silent_and_slow_clients_are_cut_off(server: ServerProcess) -> None:
    silent = _connect(server)  # says nothing at all
    headers_only = _connect(server)
    headers_only.sendall(b"POST /v1/models/digits/classify HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
    slow_body = _connect(server)
    slow_body.sendall(b"POST /v1/models/digits/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
    started = time.monotonic()
    for sock in (silent, headers_only, slow_body):
        assert _closed_within(sock, 10 * TIMEOUT_S)
        sock.close()
    assert time.monotonic() - started < 10 * TIMEOUT_S
    assert _answers(server)


def test_at_the_limit_a_new_connection_takes_the_place_of_an_idle_one(server: ServerProcess) -> None:
    held = [_connect(server) for _ in range(8)]  # the limit, all silent (each is cut after the timeout anyway)
    try:
        time.sleep(0.2)  # let the server accept them all
        assert _answers(server)  # a normal client is served at once: the longest-silent connection made room
        assert _closed_within(held[0], TIMEOUT_S / 2)
    finally:
        for sock in held:
            sock.close()
    server.wait_log(lambda e: "closed the connection idle the longest" in str(e.get("msg", "")), 5)


def test_at_the_limit_with_every_connection_in_a_request_a_new_one_is_closed(server: ServerProcess) -> None:
    busy = [_connect(server) for _ in range(8)]
    try:
        for sock in busy:  # each in the middle of a request: its body is on its way
            sock.sendall(b"POST /v1/models/digits/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        time.sleep(0.2)
        extra = _connect(server)
        assert _closed_within(extra, TIMEOUT_S / 2)  # closed on arrival, long before any timeout
        extra.close()
    finally:
        for sock in busy:
            sock.close()
    server.wait_log(lambda e: "limit (--max-http-connections)" in str(e.get("msg", "")), 5)
    wait_until(lambda: _answers(server), 5, "answers once the busy connections are gone")
