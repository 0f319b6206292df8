"""Triton's logging and trace extensions on both transports, through ``tritonclient``, and the OpenTelemetry spans
that the trace settings drive: every change is shown to take effect (a log line that appears or not, in the format
asked for; a request traced or not), spans are read through the SDK's in-memory exporter (and, once, through a
real OTLP/gRPC collector), and their parent/child links and times are checked against each other."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import InferenceServerException

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving.cli import build_parser
from serving.config import ServerConfig
from serving.runtime import logs
from serving.runtime.logs import LogSettings, setup_logging
from tests.support.images import draw_image, encode
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config, wait_until

sockets = pytest.mark.not_quick  # the module's servers are its own fixtures, not conftest's

TRACE_ID, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
STEPS = {"admission", "decode", "queue", "compute", "response"}
CLEARED = dict.fromkeys(("trace_level", "trace_rate", "trace_count", "log_frequency"))
SHAPES = {"digits": (1, 28, 28), "rgb": (3, 32, 32)}


# ---- helpers -------------------------------------------------------------------------------------------------------

def infer_request(model: str = "digits", images: int = 1) -> kserve_pb2.ModelInferRequest:
    x = np.random.default_rng(0).random((images, *SHAPES.get(model, SHAPES["digits"])), dtype=np.float32)
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=list(x.shape))
    return kserve_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()])


def infer(server: ServerThread, model: str = "digits",
          metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, dict[str, str]]:
    """One ModelInfer over a raw channel: (status code, trailing metadata)."""
    with grpc.insecure_channel(server.address) as channel:
        call = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        try:
            _, result = call.with_call(infer_request(model), metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            return e.code(), dict(e.trailing_metadata() or ())  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, dict(result.trailing_metadata() or ())


def roots(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def children(exporter: InMemorySpanExporter, root: ReadableSpan) -> dict[str, ReadableSpan]:
    found = [s for s in exporter.get_finished_spans() if s.parent is not None
             and s.parent.span_id == root.context.span_id]
    assert len({s.name for s in found}) == len(found), [s.name for s in found]
    return {s.name: s for s in found}


def check_steps(root: ReadableSpan, steps: dict[str, ReadableSpan]) -> None:
    """Every step inside its request, in the order a request goes through them, the queue ending where the compute
    starts and the response starting where the compute ends."""
    assert set(steps) == STEPS
    for span in steps.values():
        assert span.context.trace_id == root.context.trace_id
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, span.name
    s = steps
    assert s["admission"].end_time <= s["decode"].start_time
    assert s["decode"].end_time <= s["queue"].start_time
    assert s["queue"].end_time == s["compute"].start_time
    assert s["compute"].end_time == s["response"].start_time
    assert s["response"].end_time == root.end_time


def refused(call: Callable[[], Any]) -> tuple[str, str]:
    """(status, message) of a tritonclient call that must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def traceresponse(root: ReadableSpan) -> str:
    """W3C ``traceresponse``: the trace, the server's root span, its flags (sampled; a new trace is also "random")."""
    c = root.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


# ---- log settings -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged(repository: Repo) -> Iterator[tuple[ServerThread, io.StringIO]]:
    """A server started as ``serve --log-level WARNING --log-format json`` does, its log written to a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._settings
    buffer = io.StringIO()
    setup_logging("WARNING", "json", stream=buffer)
    server = ServerThread(base_config(repository.path, models=("digits",))).start()
    yield server, buffer
    server.close()
    root.handlers[:], _, logs._settings = saved
    root.setLevel(saved[1])


@pytest.fixture
def log_client(logged: tuple[ServerThread, io.StringIO]) -> Iterator[tuple[tgrpc.InferenceServerClient, io.StringIO]]:
    server, buffer = logged
    client = tgrpc.InferenceServerClient(server.address)
    client.update_log_settings(dict.fromkeys(("log_info", "log_warning", "log_error", "log_verbose_level",
                                              "log_format")))  # all back to where they started
    buffer.seek(0)
    buffer.truncate()
    yield client, buffer
    client.close()


def lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def settings_of(response: kserve_pb2.LogSettingsResponse) -> dict[str, Any]:
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in response.settings.items()}


@sockets
def test_log_settings_start_from_the_command_line_and_each_change_takes_effect(log_client, logged) -> None:  # type: ignore[no-untyped-def]
    client, buffer = log_client
    server, _ = logged
    probe = logging.getLogger("tests.probe")
    assert settings_of(client.get_log_settings()) == {
        "log_file": "", "log_info": False, "log_warning": True, "log_error": True, "log_verbose_level": 0,
        "log_format": "json"}
    probe.info("one")
    assert lines(buffer) == []

    assert settings_of(client.update_log_settings({"log_info": True}))["log_info"] is True
    probe.info("two")
    assert [json.loads(line)["msg"] for line in lines(buffer)][-1] == "two"

    client.update_log_settings({"log_format": "text"})
    probe.info("three")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO tests\.probe: three", lines(buffer)[-1])

    # Verbose: the DEBUG line each answered request makes (serving.rpc) appears only at level 1 and above.
    assert infer(server)[0] == grpc.StatusCode.OK
    assert not any("ModelInfer OK" in line for line in lines(buffer))
    after = settings_of(client.update_log_settings({"log_verbose_level": 1, "log_format": "default"}))
    assert (after["log_verbose_level"], after["log_format"]) == (1, "json")  # default: the start format
    _, trailers = infer(server)
    entry = json.loads(lines(buffer)[-1])
    assert (entry["msg"], entry["level"], entry["request_id"]) == ("ModelInfer OK", "debug", trailers["x-request-id"])

    client.update_log_settings({"log_warning": False, "log_format": "ISO8601"})  # Triton's name for our text
    probe.warning("four")
    probe.error("five")
    assert lines(buffer)[-1].endswith("ERROR tests.probe: five")
    assert not any("four" in line for line in lines(buffer))

    # Cleared (a value with no field set): back to --log-level WARNING, --log-format json.
    cleared = client.update_log_settings(dict.fromkeys(("log_info", "log_warning", "log_verbose_level",
                                                        "log_format")))
    assert settings_of(cleared) == settings_of(client.get_log_settings()) == {
        "log_file": "", "log_info": False, "log_warning": True, "log_error": True, "log_verbose_level": 0,
        "log_format": "json"}
    probe.info("six")
    probe.warning("seven")
    assert json.loads(lines(buffer)[-1])["msg"] == "seven"
    assert not any("six" in line for line in lines(buffer))


@sockets
def test_log_settings_over_http_are_the_same_settings(log_client, logged) -> None:  # type: ignore[no-untyped-def]
    client, _ = log_client
    server, _ = logged
    http = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        assert http.get_log_settings() == {"log_file": "", "log_info": False, "log_warning": True,
                                           "log_error": True, "log_verbose_level": 0, "log_format": "json"}
        changed = http.update_log_settings({"log_verbose_level": 2, "log_error": False})
        assert (changed["log_verbose_level"], changed["log_error"]) == (2, False)
        assert settings_of(client.get_log_settings()) == changed
        assert http.update_log_settings({"log_error": None})["log_error"] is True  # null: the start value
    finally:
        http.close()


@sockets
def test_log_settings_refuse_a_file_and_bad_values_and_change_nothing(log_client, logged) -> None:  # type: ignore[no-untyped-def]
    client, _ = log_client
    server, _ = logged
    before = settings_of(client.get_log_settings())
    file_refused = ("log_file: writing the log to a file named by a client is refused; the log goes to stderr "
                    "(collect it there), so log_file can only be \"\"")
    assert refused(lambda: client.update_log_settings({"log_info": True, "log_file": "/tmp/x.log"})) == (
        "StatusCode.INVALID_ARGUMENT", file_refused)
    assert refused(lambda: client.update_log_settings({"log_colour": True})) == (
        "StatusCode.INVALID_ARGUMENT", "unknown log setting 'log_colour'; the settings are log_file, log_info, "
        "log_warning, log_error, log_verbose_level, log_format")
    assert refused(lambda: client.update_log_settings({"log_format": "xml"})) == (
        "StatusCode.INVALID_ARGUMENT", "log_format 'xml': choose json, text, ISO8601 (= text) or default (the "
        "server's --log-format)")
    # A number where a boolean belongs (tritonclient always sends log_info as a bool: the raw message does not).
    with grpc.insecure_channel(server.address) as channel:
        value = kserve_pb2.LogSettingsRequest.SettingValue
        with pytest.raises(grpc.RpcError) as info:
            kserve_grpc.GRPCInferenceServiceStub(channel).LogSettings(
                kserve_pb2.LogSettingsRequest(settings={"log_info": value(uint32_param=1)}), timeout=10)
    assert (info.value.code(), info.value.details()) == (  # type: ignore[attr-defined]
        grpc.StatusCode.INVALID_ARGUMENT, "log_info takes a boolean (true or false), got 1")

    http = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        assert refused(lambda: http.update_log_settings({"log_file": "server.log"})) == ("400", file_refused)
        assert refused(lambda: http.update_log_settings({"log_info": "yes"})) == (
            "400", "log_info takes a boolean (true or false), got 'yes'")
        assert refused(lambda: http.update_log_settings({"log_verbose_level": -1})) == (
            "400", "log_verbose_level takes an unsigned integer (0: no verbose lines, 1 or more: DEBUG lines), got -1")
    finally:
        http.close()
    for body, status, message in [
        (b"[1, 2]", 400, 'the body must be a JSON object of settings: {"name": value, ...}'),
        (b"{", 400, "the body is not valid JSON: Expecting property name enclosed in double quotes"),
        (json.dumps({"log_info": True, "padding": "x" * 70_000}).encode(), 413, "a settings body larger than 64 KiB"),
    ]:
        answer = httpx.post(f"{server.http_url}/v2/logging", content=body, timeout=10)
        assert answer.status_code == status
        assert answer.json()["error"].startswith(message)
    assert settings_of(client.get_log_settings()) == before  # all or nothing: log_info did not change


@pytest.mark.parametrize(("level", "expected"), [
    ("DEBUG", (True, True, True, 1)),
    ("INFO", (True, True, True, 0)),
    ("WARNING", (False, True, True, 0)),
    ("ERROR", (False, False, True, 0)),
    ("CRITICAL", (False, False, False, 0)),
])
def test_log_level_maps_to_triton_switches(level: str, expected: tuple[bool, bool, bool, int]) -> None:
    root = logging.getLogger()
    saved = root.level
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    try:
        settings = LogSettings(level, "text", handler)
        got = settings.get()
        assert (got["log_info"], got["log_warning"], got["log_error"], got["log_verbose_level"]) == expected
        # The switches are per class, not a threshold: errors and DEBUG lines on, INFO and WARNING off.
        settings.update({"log_info": False, "log_warning": False, "log_error": True, "log_verbose_level": 1})
        probe = logging.getLogger("tests.switches")
        for emit in (probe.debug, probe.info, probe.warning, probe.error, probe.critical):
            handler.handle(probe.makeRecord(probe.name, logging.getLevelName(emit.__name__.upper()), "", 0,
                                            emit.__name__, None, None))
        assert [line.split()[1] for line in lines(buffer)] == ["DEBUG", "ERROR", "CRITICAL"]
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(saved)


# ---- trace settings and spans ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def traced(repository: Repo) -> Iterator[tuple[ServerThread, InMemorySpanExporter]]:
    """A server started with ``--trace-level TIMESTAMPS --trace-rate 1``, its spans kept in memory."""
    server = ServerThread(base_config(repository.path, trace_level="TIMESTAMPS", trace_rate=1))
    exporter = InMemorySpanExporter()
    server.server.tracing.add_span_processor(SimpleSpanProcessor(exporter))
    server.start()
    yield server, exporter
    server.close()


@pytest.fixture
def tracing(traced) -> Iterator[tuple[ServerThread, InMemorySpanExporter, tgrpc.InferenceServerClient]]:  # type: ignore[no-untyped-def]
    """The traced server with every trace setting cleared (the start values) and no spans yet."""
    server, exporter = traced
    client = tgrpc.InferenceServerClient(server.address)
    for model in ("digits", "rgb"):
        client.update_trace_settings(model, CLEARED)
    client.update_trace_settings(settings=CLEARED)
    exporter.clear()
    yield server, exporter, client
    client.close()


@sockets
def test_a_grpc_request_continues_the_clients_trace_with_a_span_per_step(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    code, trailers = infer(server, metadata=(("traceparent", SAMPLED), ("tracestate", "vendor=1")))
    assert code == grpc.StatusCode.OK
    [root] = roots(exporter)
    assert root.name == "ModelInfer"
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None
    assert root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert root.context.trace_state.get("vendor") == "1"
    assert dict(root.attributes or {}) == {
        "serving.model": "digits", "serving.model_version": 1, "serving.request_id": trailers["x-request-id"],
        "rpc.system": "grpc", "rpc.method": "ModelInfer", "serving.outcome": "OK"}
    steps = children(exporter, root)
    check_steps(root, steps)
    assert dict(steps["compute"].attributes or {}) == {"serving.batch.images": 1, "serving.batch.requests": 1}
    assert trailers["traceresponse"] == traceresponse(root)


@sockets
def test_an_http_request_is_traced_the_same_way(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    png = encode(draw_image(1, (28, 28), "L"))
    answer = httpx.post(f"{server.http_url}/v1/models/digits/classify", content=png, headers={"traceparent": SAMPLED},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    [root] = roots(exporter)
    assert root.name == "POST /v1/models/{name}/classify"
    assert (f"{root.context.trace_id:032x}", f"{root.parent.span_id:016x}") == (TRACE_ID, CLIENT_SPAN)
    attributes = dict(root.attributes or {})
    assert (attributes["http.route"], attributes["serving.operation"]) == ("/v1/models/{name}/classify", "Classify")
    assert attributes["serving.request_id"] == answer.headers["x-request-id"]
    check_steps(root, children(exporter, root))
    assert answer.headers["traceresponse"] == traceresponse(root)


@sockets
def test_without_a_traceparent_a_new_trace_starts_and_a_malformed_one_is_ignored(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    _, trailers = infer(server)
    _, malformed = infer(server, metadata=(("traceparent", "00-not-a-trace-01"),))
    first, second = roots(exporter)
    assert first.parent is None
    assert second.parent is None
    assert first.context.trace_id != second.context.trace_id
    assert (trailers["traceresponse"], malformed["traceresponse"]) == (traceresponse(first), traceresponse(second))


@sockets
def test_the_clients_sampling_decision_wins_over_the_rate(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, client = tracing
    code, trailers = infer(server, metadata=(("traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-00"),))
    assert code == grpc.StatusCode.OK
    assert exporter.get_finished_spans() == ()
    assert "traceresponse" not in trailers
    client.update_trace_settings(settings={"trace_rate": "1000"})
    infer(server)  # the first request of a thousand: not traced
    assert exporter.get_finished_spans() == ()
    infer(server, metadata=(("traceparent", SAMPLED),))  # sampled by its client: traced whatever the rate
    [root] = roots(exporter)
    assert f"{root.context.trace_id:032x}" == TRACE_ID


@sockets
def test_trace_rate_and_count(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, client = tracing
    rate = client.update_trace_settings(settings={"trace_rate": "3"}, as_json=True)["settings"]
    assert rate["trace_rate"] == {"value": ["3"]}
    for _ in range(7):
        infer(server)
    assert len(roots(exporter)) == 2  # the 3rd and the 6th

    exporter.clear()
    client.update_trace_settings(settings={"trace_rate": "1", "trace_count": "2"})
    for _ in range(4):
        infer(server)
    assert len(roots(exporter)) == 2
    assert client.get_trace_settings(as_json=True)["settings"]["trace_count"] == {"value": ["0"]}  # none left
    client.update_trace_settings(settings={"trace_count": None})  # cleared: -1, the start value (no limit)
    infer(server)
    assert len(roots(exporter)) == 3


@sockets
def test_a_models_settings_override_the_global_ones_until_cleared(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, client = tracing
    client.update_trace_settings(settings={"trace_level": "OFF"})
    client.update_trace_settings("digits", {"trace_level": "TIMESTAMPS"})
    assert infer(server, "rgb")[0] == grpc.StatusCode.OK
    assert exporter.get_finished_spans() == ()
    infer(server, "digits")
    assert [dict(r.attributes or {})["serving.model"] for r in roots(exporter)] == ["digits"]

    levels = {name: client.get_trace_settings(name, as_json=True)["settings"]["trace_level"]["value"]
              for name in ("", "digits", "rgb")}
    assert levels == {"": ["OFF"], "digits": ["TIMESTAMPS"], "rgb": ["OFF"]}

    exporter.clear()
    client.update_trace_settings("digits", {"trace_level": None})  # back to following the global OFF
    _, trailers = infer(server, "digits")
    assert exporter.get_finished_spans() == ()
    assert "traceresponse" not in trailers


@sockets
def test_trace_settings_over_http_have_tritons_shape_and_clear_to_the_start_values(tracing) -> None:  # type: ignore[no-untyped-def]
    server, _, client = tracing
    http = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        start = {"trace_file": "", "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
                 "log_frequency": "0", "trace_mode": "opentelemetry"}
        assert http.get_trace_settings() == start
        assert http.update_trace_settings(settings={"trace_rate": 7, "log_frequency": "5"})["trace_rate"] == "7"
        assert client.get_trace_settings(as_json=True)["settings"]["log_frequency"] == {"value": ["5"]}
        model = http.update_trace_settings("rgb", {"trace_count": "4"})
        assert (model["trace_count"], model["trace_rate"]) == ("4", "7")  # its own count, the global rate
        assert http.get_trace_settings("rgb") == model
        assert http.update_trace_settings(settings={"trace_rate": None, "log_frequency": []}) == start
    finally:
        http.close()


@sockets
def test_trace_settings_refuse_files_tensors_and_bad_values_and_change_nothing(tracing) -> None:  # type: ignore[no-untyped-def]
    server, _, client = tracing
    before = client.get_trace_settings(as_json=True)
    file_refused = ("trace_file: writing traces to a file named by a client is refused; spans go to the OTLP "
                    "collector of --trace-endpoint, so trace_file can only be \"\"")
    grpc_error = "StatusCode.INVALID_ARGUMENT"
    assert refused(lambda: client.update_trace_settings(settings={"trace_rate": "5", "trace_file": "/tmp/t.json"})) \
        == (grpc_error, file_refused)
    assert refused(lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS", "TENSORS"]})) == (
        grpc_error, "trace_level TENSORS is not supported: spans carry timings, never tensor contents; use "
        "TIMESTAMPS")
    assert refused(lambda: client.update_trace_settings(settings={"trace_level": ["OFF", "TIMESTAMPS"]})) == (
        grpc_error, "trace_level ['OFF', 'TIMESTAMPS']: give OFF or TIMESTAMPS")
    assert refused(lambda: client.update_trace_settings(settings={"trace_rate": "often"})) == (
        grpc_error, "trace_rate takes an integer 0 or more (one request in N is traced; 0: only those the client "
        "sampled), got 'often'")
    assert refused(lambda: client.update_trace_settings(settings={"trace_count": "-2"}))[1].startswith(
        "trace_count takes an integer -1 or more")
    assert refused(lambda: client.update_trace_settings(settings={"trace_colour": "red"})) == (
        grpc_error, "unknown trace setting 'trace_colour'; the settings are trace_file, trace_level, trace_rate, "
        "trace_count, log_frequency, trace_mode")
    assert refused(lambda: client.update_trace_settings("digits", {"log_frequency": "3"}))[1].startswith(
        "log_frequency is the server's")
    assert refused(lambda: client.get_trace_settings("nope"))[0] == "StatusCode.NOT_FOUND"
    assert client.get_trace_settings(as_json=True) == before

    http = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        assert refused(lambda: http.update_trace_settings(settings={"trace_file": "t.json"})) == ("400", file_refused)
        assert refused(lambda: http.update_trace_settings(settings={"trace_rate": {"n": 1}})) == (
            "400", 'trace setting \'trace_rate\' takes a string or a list of strings, got {"n": 1}')
        assert refused(lambda: http.get_trace_settings("nope"))[0] == "404"
    finally:
        http.close()


@sockets
def test_a_refused_request_is_traced_with_its_error(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    assert infer(server, "nope")[0] == grpc.StatusCode.NOT_FOUND
    [root] = roots(exporter)
    assert (root.status.status_code, dict(root.attributes or {})["serving.outcome"]) == (StatusCode.ERROR,
                                                                                          "NOT_FOUND")
    steps = children(exporter, root)
    assert set(steps) == {"admission"}
    assert steps["admission"].status.status_code is StatusCode.ERROR
    assert steps["admission"].status.description.startswith("ModelNotFound: ")


@sockets
def test_requests_computed_in_one_batch_say_so(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    batcher = server.model("digits").batcher
    assert batcher is not None
    with grpc.insecure_channel(server.address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)

        def send() -> grpc.Future:
            return stub.ModelInfer.future(infer_request(), timeout=30)

        with server.held_batch("digits", send) as first:
            later = [send(), send()]
            wait_until(lambda: batcher.depth == 2, 10, "two requests queued behind the held batch")
        for call in (first, *later):
            call.result()
    computes = sorted((s for s in exporter.get_finished_spans() if s.name == "compute"),
                      key=lambda s: s.attributes["serving.batch.requests"])  # type: ignore[index]
    alone, *together = computes
    assert alone.attributes["serving.batch.requests"] == 1  # type: ignore[index]
    assert [dict(s.attributes or {}) for s in together] == [{"serving.batch.images": 2,
                                                             "serving.batch.requests": 2}] * 2
    assert together[0].start_time == together[1].start_time
    assert together[0].end_time == together[1].end_time
    assert together[0].context.trace_id != together[1].context.trace_id  # two requests, one onnxruntime call
    for root in roots(exporter):
        check_steps(root, children(exporter, root))


@sockets
def test_each_message_of_a_stream_is_a_traced_request(tracing) -> None:  # type: ignore[no-untyped-def]
    server, exporter, _ = tracing
    with grpc.insecure_channel(server.address) as channel:
        stream = kserve_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([infer_request(), infer_request("rgb")]), metadata=(("traceparent", SAMPLED),), timeout=30)
        answers = list(stream)
    assert [a.error_message for a in answers] == ["", ""]
    found = roots(exporter)
    assert sorted(dict(r.attributes or {})["serving.model"] for r in found) == ["digits", "rgb"]
    for root in found:
        assert root.name == "ModelStreamInfer"
        assert (f"{root.context.trace_id:032x}", f"{root.parent.span_id:016x}") == (TRACE_ID, CLIENT_SPAN)
        check_steps(root, children(exporter, root))


@sockets
def test_metadata_names_both_extensions(tracing) -> None:  # type: ignore[no-untyped-def]
    server, _, client = tracing
    assert {"logging", "trace"} <= set(client.get_server_metadata(as_json=True)["extensions"])
    assert {"logging", "trace"} <= set(httpx.get(f"{server.http_url}/v2", timeout=10).json()["extensions"])


# ---- export over OTLP -----------------------------------------------------------------------------------------------

class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver, as a collector runs one."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        self.received = threading.Event()

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            self.resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
            self.spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@sockets
def test_spans_are_exported_over_otlp_to_the_trace_endpoint(make_server, repository: Repo, collector) -> None:  # type: ignore[no-untyped-def]
    receiver, port = collector
    server = make_server(base_config(repository.path, models=("digits",), trace_endpoint=f"http://127.0.0.1:{port}",
                                     trace_level="TIMESTAMPS", trace_rate=1))
    client = tgrpc.InferenceServerClient(server.address)
    try:
        client.update_trace_settings(settings={"log_frequency": "1"})  # export after every trace
    finally:
        client.close()
    _, trailers = infer(server, metadata=(("traceparent", SAMPLED),))
    assert receiver.received.wait(30), "the collector received nothing"
    wait_until(lambda: len(receiver.spans) == 1 + len(STEPS), 30, "the request's six spans")
    by_name = {span.name: span for span in receiver.spans}
    assert set(by_name) == {"ModelInfer", *STEPS}
    root = by_name["ModelInfer"]
    assert (root.trace_id.hex(), root.parent_span_id.hex()) == (TRACE_ID, CLIENT_SPAN)
    assert all(by_name[name].parent_span_id == root.span_id for name in STEPS)
    assert trailers["traceresponse"] == f"00-{TRACE_ID}-{root.span_id.hex()}-01"
    assert receiver.resources[0]["service.name"] == "resnet-serving"


# ---- the command line -----------------------------------------------------------------------------------------------

def test_trace_options_come_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_TRACE_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("SERVING_TRACE_RATE", "10")
    args = build_parser().parse_args(["serve", "--repository", "r", "--trace-level", "timestamps",
                                      "--log-level", "debug"])
    assert (args.trace_endpoint, args.trace_level, args.trace_rate, args.trace_count, args.log_level) == (
        "http://collector:4317", "TIMESTAMPS", 10, -1, "DEBUG")


@pytest.mark.parametrize(("settings", "message"), [
    ({"trace_endpoint": "collector:4317"}, "--trace-endpoint 'collector:4317': give the OTLP/gRPC collector's URL, "
                                           "http://HOST:4317 (https:// for TLS)"),
    ({"trace_level": "TENSORS"}, "--trace-level 'TENSORS': choose OFF or TIMESTAMPS"),
    ({"trace_rate": -1}, "--trace-rate must be >= 0 and --trace-count >= -1 (-1: no limit)"),
])
def test_bad_trace_options_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ServerConfig(repository=Path("r"), **settings)
