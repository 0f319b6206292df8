"""Hostile volume and shape against a real server process: each attack gets a clean answer while a normal client is
served, and the server's memory stays bounded.

Every attack here once hurt a default server (compressed tensor bombs, 100k-image requests, clients that never read
their stream, idle-stream floods, 70-dimension shapes, 100,000-digit versions, raw garbage instead of protobuf,
megabyte request ids, half-open metrics connections). Each test checks the status code and message the client gets,
that a normal Classify from another connection is answered correctly meanwhile, and the server's RSS.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.runtime.logs import RateLimit
from serving.runtime.predictor import Predictor
from tests.support.repositories import Repo
from tests.support.servers import ServerProcess, call, classify_request, wait_until

pytestmark = pytest.mark.slow

RSS_BOUND_MB = 400         # the server's resident memory during any attack here (it idles at ~110 MB)
RSS_RETURN_MB = 50         # after an attack, RSS is back within this of where it started
NORMAL_ANSWER_S = 5.0      # a hang guard: normal answers take milliseconds (the figures say how many)
WRITE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(repository: Repo) -> Iterator[ServerProcess]:
    proc = ServerProcess(repository.path, "--stream-write-timeout-s", str(WRITE_TIMEOUT_S),
                         "--max-concurrent-streams", "50")
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28), "L").save(buf, "PNG")
    return buf.getvalue()


def _rss_mb(server: ServerProcess) -> float:
    return server.rss_kb() / 1024


class Normal:
    """Normal Classify calls from their own connection, one after another, while an attack runs."""

    def __init__(self, server: ServerProcess, payload: bytes, expected: str) -> None:
        # A connection of its own: channels to one address otherwise share one, and the attack's streams with it.
        self.channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = ic_grpc.ImageClassifierStub(self.channel)
        self.payload, self.expected = payload, expected
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.backed_off = 0
        self.peak_rss_mb = 0.0
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            code, details, response = call(lambda: self.stub.Classify(classify_request(self.payload), timeout=10))
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and ("queue full" in details or "nearly full" in details):
                # The attack is also load: a well-behaved client backs off and retries. From the same address and
                # without tokens it is the attacker's client, whose fair share the attack has used up.
                self.backed_off += 1
                self._stop.wait(0.05)
                continue
            self.latencies.append(time.perf_counter() - started)
            if code is not grpc.StatusCode.OK:
                self.failures.append(f"{code.name}: {details}")
            elif response.results[0].predictions[0].label != self.expected:
                self.failures.append(f"label {response.results[0].predictions[0].label}")
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(self._server))
            self._stop.wait(0.05)

    def __enter__(self) -> Normal:
        self._thread.start()
        wait_until(lambda: len(self.latencies) >= 1, 10, "the first normal answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self.channel.close()

    def check(self, figures: dict, name: str) -> None:
        assert not self.failures, self.failures[:3]
        assert len(self.latencies) >= 2
        figures[f"volume: {name}: normal Classify during the attack"] = (
            f"{len(self.latencies)} answered, max {max(self.latencies) * 1e3:.0f} ms, {self.backed_off} refused "
            f"(queue full) and retried; server peak RSS {self.peak_rss_mb:.0f} MB")
        assert max(self.latencies) < NORMAL_ANSWER_S, sorted(self.latencies)[-3:]
        assert self.peak_rss_mb < RSS_BOUND_MB


@pytest.fixture
def normal(server: ServerProcess, digit_png: bytes, digits: Predictor) -> Normal:
    expected = digits.classify([digit_png], top_k=1)[0][0].label
    return Normal(server, digit_png, expected)


@pytest.fixture
def rss_returns(server: ServerProcess) -> Iterator[None]:
    before = _rss_mb(server)
    yield
    wait_until(lambda: _rss_mb(server) < before + RSS_RETURN_MB, 10, f"RSS back within {RSS_RETURN_MB} MB of {before}")


def _infer_request(shape: list[int], raw: bytes, version: str = "") -> kserve_pb2.ModelInferRequest:
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=shape)
    return kserve_pb2.ModelInferRequest(model_name="digits", model_version=version, inputs=[tensor],
                                        raw_input_contents=[raw])


def _no_tracebacks(server: ServerProcess) -> None:
    bad = server.entries(lambda e: e.get("level") == "error" or "exc" in e or "Traceback" in str(e.get("msg", "")))
    assert not bad, bad[:2]


def test_compressed_tensor_bomb_is_refused(server: ServerProcess, normal: Normal, rss_returns: None,
                                           figures: dict) -> None:
    """120 MiB of zeros gzip to ~120 KB: the server refuses compressed requests unless --allow-compression."""
    bomb = _infer_request([40_000, 1, 28, 28], bytes(40_000 * 28 * 28 * 4))
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 256 << 20)])
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=kserve_pb2.ModelInferRequest.SerializeToString)
    try:
        with normal:
            for _ in range(4):
                code, details, _ = call(lambda: infer(bomb, timeout=30, compression=grpc.Compression.Gzip))
                assert (code, details) == (grpc.StatusCode.UNIMPLEMENTED, "Compression algorithm 'gzip' is disabled.")
    finally:
        channel.close()
    normal.check(figures, "gzip tensor bombs")
    _no_tracebacks(server)


def test_allowed_compression_keeps_the_size_limit(repository: Repo) -> None:
    """With --allow-compression, a small compressed request works and the limit applies after decompression."""
    proc = ServerProcess(repository.path, "--allow-compression", "--max-message-mb", "8")
    try:
        ok = _infer_request([1, 1, 28, 28], bytes(28 * 28 * 4))
        code, details, _ = call(lambda: proc.inference.ModelInfer(ok, timeout=10,
                                                                  compression=grpc.Compression.Gzip))
        assert code is grpc.StatusCode.OK, details
        bomb = _infer_request([4_000, 1, 28, 28], bytes(4_000 * 28 * 28 * 4))  # 12 MiB inflated, ~12 KB on the wire
        code, details, _ = call(lambda: proc.inference.ModelInfer(bomb, timeout=10, compression=grpc.Compression.Gzip))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    finally:
        assert proc.stop() == 0


def test_images_per_request_are_bounded(server: ServerProcess, digit_png: bytes, normal: Normal,
                                        rss_returns: None, figures: dict) -> None:
    """100,000 tiny PNGs in one request (12.7 MB, under the message limit) are refused before any decoding; so is a
    ModelInfer batch of 100,000."""
    many = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=digit_png)] * 100_000)
    with normal:
        started = time.perf_counter()
        code, details, _ = call(lambda: server.classifier.Classify(many, timeout=30))
        refused_s = time.perf_counter() - started
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == ("100000 images in one request, more than the limit of 256 (--max-images-per-request); "
                           "split the request")
        code, details, _ = call(lambda: server.inference.ModelInfer(
            _infer_request([100_000, 1, 28, 28], b""), timeout=30))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("100000 images in one request")
    figures["volume: 100,000 PNGs in one Classify"] = f"INVALID_ARGUMENT in {refused_s * 1e3:.0f} ms"
    normal.check(figures, "100k-image requests")


def test_large_request_stops_at_its_deadline_and_shares_the_decoders(server: ServerProcess, normal: Normal,
                                                                     rss_returns: None, figures: dict) -> None:
    """200 images of 3000×3000 take seconds to decode: a normal request is decoded between the big one's rounds, and
    once the big one's deadline passes the server stops spending CPU on it."""
    buf = io.BytesIO()
    Image.new("L", (3000, 3000), 77).save(buf, "PNG")  # 15 KB on the wire, ~80 ms to decode
    big = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=buf.getvalue())] * 200)
    with normal:
        code, details, _ = call(lambda: server.classifier.Classify(big, timeout=1.5))
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        cpu_at_deadline = _cpu_seconds(server)
        time.sleep(2.0)  # the subject: how much CPU the server still spends on the abandoned request
        after = _cpu_seconds(server) - cpu_at_deadline
    figures["volume: 200 × 9 MP PNG, 1.5 s deadline"] = f"server CPU in the 2 s after the deadline: {after:.2f} s"
    assert after < 1.0  # the normal client's requests cost far less than this; the abandoned decode would cost ~10 s
    normal.check(figures, "200 large PNGs with a deadline")


def _cpu_seconds(server: ServerProcess) -> float:
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def test_streams_that_are_not_read_are_ended(server: ServerProcess, digit_png: bytes, normal: Normal,
                                             rss_returns: None, figures: dict) -> None:
    """Clients that keep sending and never read: each stream is ended after --stream-write-timeout-s with
    RESOURCE_EXHAUSTED, and the server never holds more than a bounded backlog."""
    # 8 images, all 10 labels each: ~2 KB an answer, so 100 unread answers overflow the flow-control windows.
    request = ic_pb2.ClassifyRequest(model="digits", top_k=10, images=[ic_pb2.Image(encoded=digit_png)] * 8)
    stop_sending = threading.Event()
    # A small receive window on the client (no BDP probing, 8 KiB per stream), so unread answers back up to the server.
    channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0),
                                                             ("grpc.http2.lookahead_bytes", 8192),
                                                             ("grpc.use_local_subchannel_pool", 1)])
    stub = ic_grpc.ImageClassifierStub(channel)
    sent = [0] * 20

    def messages(i: int) -> Iterator[ic_pb2.ClassifyRequest]:
        for _ in range(100):
            sent[i] += 1
            yield request
        stop_sending.wait(30)  # then keep the stream open, sending nothing and reading nothing

    try:
        with normal:
            streams = [stub.ClassifyStream(messages(i), timeout=60) for i in range(len(sent))]
            for stream in streams:
                next(stream)  # one response read, then none
            time.sleep(WRITE_TIMEOUT_S + 2.0)  # the subject: clients that stop reading
            endings = [_ending(stream) for stream in streams]
            sent_then = list(sent)
    finally:
        stop_sending.set()
        channel.close()
    slow = ("RESOURCE_EXHAUSTED", f"the client read no response for {WRITE_TIMEOUT_S:g} s (--stream-write-timeout-s); "
                                  "stream ended")
    figures["volume: 20 unread streams"] = (f"{sum(1 for e in endings if e[:2] == slow)} ended as slow readers "
                                            f"after {min(e[2] for e in endings)}–{max(e[2] for e in endings)} answers, "
                                            f"{sum(sent_then)} messages sent in all")
    assert {e[:2] for e in endings} == {slow}
    normal.check(figures, "unread streams")


def _ending(stream: grpc.Call) -> tuple[str, str, int]:
    """Read what the stream still has: (code, details, responses read)."""
    read = 0
    try:
        for _ in stream:  # type: ignore[attr-defined]
            read += 1
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", read  # type: ignore[attr-defined]
    return "OK", "", read


def test_idle_streams_per_connection_are_capped(server: ServerProcess, normal: Normal, rss_returns: None,
                                                figures: dict) -> None:
    """300 streams opened on one connection that never send: at most --max-concurrent-streams (50 here) are open on
    the server at once; the rest wait in the client."""
    channel = grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = ic_grpc.ImageClassifierStub(channel)
    never = threading.Event()

    def silent() -> Iterator[ic_pb2.ClassifyRequest]:
        never.wait(30)
        return
        yield  # a generator that sends nothing until the test ends

    try:
        with normal:
            streams = [stub.ClassifyStream(silent(), timeout=20) for _ in range(300)]
            wait_until(lambda: _inflight(server, "ClassifyStream") >= 50, 15, "50 open streams")
            time.sleep(0.5)  # the subject: the other streams must stay out
            open_streams = _inflight(server, "ClassifyStream")
            normal_peak = normal.peak_rss_mb
        for stream in streams:
            stream.cancel()
    finally:
        never.set()
        channel.close()
    figures["volume: 300 idle streams on one connection"] = f"{open_streams:.0f} open on the server"
    assert open_streams == 50
    assert normal_peak < RSS_BOUND_MB
    normal.check(figures, "idle stream flood")


def _inflight(server: ServerProcess, method: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'serving_inflight_requests{{method="{method}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(("what", "send", "code", "message"), [
    ("70-dimension ModelInfer shape",
     lambda s: s.inference.ModelInfer(_infer_request([1] * 70, b"\0\0\0\0"), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "input 'input' has 70 dimensions; at most 8 are accepted"),
    ("70-dimension Classify tensor",
     lambda s: s.classifier.Classify(ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(
         tensor=ic_pb2.Tensor(shape=[1] * 70, values=[0.0]))]), timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "image 0: tensor has 70 dimensions; at most 8 are accepted"),
    ("100,000-digit version",
     lambda s: s.inference.ModelInfer(_infer_request([1, 1, 28, 28], bytes(3136), version="9" * 100_000), timeout=10),
     grpc.StatusCode.NOT_FOUND, "no model version '" + "9" * 64 + "'… (versions are integers)"),
    ("version 01",
     lambda s: s.inference.ModelInfer(_infer_request([1, 1, 28, 28], bytes(3136), version="01"), timeout=10),
     grpc.StatusCode.NOT_FOUND, "no model version '01' (versions are integers)"),
    ("bytes that are not a ClassifyRequest",
     lambda s: s.channel.unary_unary("/imageclassifier.v1.ImageClassifier/Classify")(b"\xff\xff\xff\xff", timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid imageclassifier.v1.ClassifyRequest message"),
    ("bytes that are not a ModelInferRequest",
     lambda s: s.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x0a\xff\xff", timeout=10),
     grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid inference.ModelInferRequest message"),
])
def test_hostile_fields_get_clean_codes(server: ServerProcess, what: str, send, code: grpc.StatusCode,
                                        message: str) -> None:  # type: ignore[no-untyped-def]
    got, details, _ = call(lambda: send(server))
    assert (got, details) == (code, message), what
    _no_tracebacks(server)


def test_garbage_in_a_stream_is_answered_in_the_stream(server: ServerProcess, digit_png: bytes) -> None:
    stream = server.channel.stream_stream("/imageclassifier.v1.ImageClassifier/ClassifyStream",
                                          response_deserializer=ic_pb2.ClassifyStreamResponse.FromString)
    good = classify_request(digit_png).SerializeToString()
    answers = list(stream(iter([b"\xff\xff\xff", good]), timeout=10))
    assert answers[0].error.message == "the request is not a valid imageclassifier.v1.ClassifyRequest message"
    assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[1].response.results[0].predictions
    _no_tracebacks(server)


def test_request_ids_are_checked_like_the_header(server: ServerProcess, digit_png: bytes) -> None:
    """A megabyte id, or one with a newline, is neither echoed nor logged: the server uses its own."""
    huge = "x" * (1 << 20)
    forged = 'ok\n{"level": "error", "msg": "forged"}'
    for rid in (huge, forged):
        request = classify_request(digit_png)
        request.request_id = rid
        response = server.classifier.Classify(request, timeout=10)
        assert response.request_id != rid
        assert 0 < len(response.request_id) <= 128
        assert response.request_id.isprintable()
    ok = classify_request(digit_png)
    ok.request_id = "client-chosen-1"
    assert server.classifier.Classify(ok, timeout=10).request_id == "client-chosen-1"
    assert not server.entries(lambda e: e.get("msg") == "forged" or huge in str(e))


def test_metrics_endpoint_survives_half_open_connections(server: ServerProcess) -> None:
    """60 connections that send nothing (more than its 16 scraper threads): the server's threads stay bounded and
    /metrics answers again once their sockets time out (5 s)."""
    threads_before = _threads(server)
    sockets = [socket.create_connection(("127.0.0.1", server.metrics_port)) for _ in range(60)]
    try:
        time.sleep(0.5)  # the subject: connections that never send a request
        assert _threads(server) <= threads_before + 16 + 2
        wait_until(lambda: _scrape_ok(server), 15, "/metrics answering again")
    finally:
        for s in sockets:
            s.close()


def _threads(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _scrape_ok(server: ServerProcess) -> bool:
    try:
        return b"serving_requests_total" in urllib.request.urlopen(server.metrics_url, timeout=2).read()
    except OSError:
        return False


def test_text_log_lines_cannot_be_forged() -> None:
    """The text format escapes control characters in the message: a quoted client string stays on its line."""
    from serving.runtime.logs import TextFormatter

    record = logging.LogRecord("serving", logging.INFO, __file__, 1, "model %s not found", ("a\nERROR forged",), None)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO model a\\nERROR forged not found"


def test_log_rate_limit_counts_what_it_drops() -> None:
    limit = RateLimit(3)
    key = ("Classify", "INVALID_ARGUMENT")
    assert [limit.allow(key) for _ in range(5)] == [0, 0, 0, None, None]
    assert limit.allow(("Classify", "NOT_FOUND")) == 0  # each key has its own budget
    limit._windows[key][0] -= 1.0  # the next second
    assert limit.allow(key) == 2  # the line that gets through says how many were dropped
