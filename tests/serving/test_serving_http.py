"""The HTTP front end end to end on a loopback port: KServe v2 REST through ``tritonclient.http``, the /v1 classify
API through httpx and curl, errors, metrics; every answer compared with what the gRPC front end gives."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from serving.client import Client
from serving.http import kserve
from serving.runtime.predictor import Predictor
from tests.support.servers import ServerThread, sample, wait_until


@pytest.fixture(scope="module")
def http(server: ServerThread):  # type: ignore[no-untyped-def]
    client = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_triton(server: ServerThread):  # type: ignore[no-untyped-def]
    client = tgrpc.InferenceServerClient(server.address)
    yield client
    client.close()


# ---- Open Inference Protocol over HTTP ---------------------------------------------------------------------------

def test_health_metadata_and_config_equal_the_grpc_answers(http, grpc_triton) -> None:  # type: ignore[no-untyped-def]
    assert http.is_server_live()
    assert http.is_server_ready()
    assert http.is_model_ready("digits")
    assert http.is_model_ready("digits", "2")
    assert not http.is_model_ready("tampered")
    assert http.get_server_metadata()["name"] == "resnet-serving"
    metadata = http.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert http.get_model_metadata("digits", "2")["versions"] == ["2"]
    # The config is the same message printed as JSON (proto3 mapping, as gRPC's as_json gives it).
    assert http.get_model_config("digits") == grpc_triton.get_model_config("digits", as_json=True)["config"]


def _fp32(module, x: np.ndarray, binary: bool):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, **({"binary_data": binary} if module is thttp else {}))
    return tensor


def _bytes(module, images: list[bytes]):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("input", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


@pytest.mark.parametrize(("datatype", "binary"), [("FP32", True), ("FP32", False), ("BYTES", True)])
def test_infer_equals_grpc_bit_for_bit(http, grpc_triton, digits: Predictor,  # type: ignore[no-untyped-def]
                                       image_files: dict[str, Path], datatype: str, binary: bool) -> None:
    paths = list(image_files.values())
    if datatype == "FP32":
        x = np.stack([digits.preprocess(p) for p in paths])
        over_http, over_grpc = _fp32(thttp, x, binary), _fp32(tgrpc, x, True)
    else:
        images = [p.read_bytes() for p in paths]
        over_http, over_grpc = _bytes(thttp, images), _bytes(tgrpc, images)
    result = http.infer("digits", [over_http], request_id="h1",
                        outputs=[thttp.InferRequestedOutput("logits", binary_data=binary)])
    logits = result.as_numpy("logits")
    assert result.get_response()["id"] == "h1"
    assert result.get_response()["model_version"] == "2"
    assert logits.dtype == np.float32
    assert logits.shape == (len(paths), 10)
    np.testing.assert_array_equal(logits, grpc_triton.infer("digits", [over_grpc]).as_numpy("logits"))


@pytest.mark.parametrize("binary", [True, False])
def test_class_count_gives_the_same_classification_over_both_transports(  # type: ignore[no-untyped-def]
        http, grpc_triton, digits: Predictor, image_files: dict[str, Path], binary: bool) -> None:
    """Triton's classification extension as tritonclient asks for it: "probability:index:label" strings, the top
    three of each image, most probable first, equal over HTTP (binary or JSON) and gRPC."""
    x = np.stack([digits.preprocess(p) for p in image_files.values()])
    over_http = http.infer("digits", [_fp32(thttp, x, True)],
                           outputs=[thttp.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
    over_grpc = grpc_triton.infer("digits", [_fp32(tgrpc, x, True)],
                                  outputs=[tgrpc.InferRequestedOutput("logits", class_count=3)])
    # tritonclient.http gives JSON BYTES elements as str, binary ones as bytes (as it does with Triton).
    top = np.vectorize(lambda item: item if isinstance(item, bytes) else item.encode(), otypes=[object])(
        over_http.as_numpy("logits"))
    assert top.shape == (len(x), 3)
    np.testing.assert_array_equal(top, over_grpc.as_numpy("logits"))
    logits = digits.run(x)
    for row, items in zip(logits, top, strict=True):
        fields = [item.decode().split(":") for item in items]
        indices = [int(index) for _, index, _ in fields]
        assert indices == list(np.argsort(-row, kind="stable")[:3])
        assert [label for _, _, label in fields] == [digits.labels[i] for i in indices]
    assert "classification" in http.get_server_metadata()["extensions"]
    assert "classification" in grpc_triton.get_server_metadata().extensions


def test_json_bytes_in_base64_and_binary_output_by_default(server: ServerThread, digits: Predictor,
                                                           image_files: dict[str, Path]) -> None:
    png = image_files["img0.png"].read_bytes()
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png).decode()]}]}
    answer = httpx.post(f"{server.http_url}/v2/models/digits/versions/2/infer", json=body)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert output["shape"] == [1, 10]
    np.testing.assert_allclose(np.array(output["data"], np.float32), digits.run(digits.preprocess(png)[None])[0],
                               atol=1e-5)
    # Asked for binary output (what tritonclient does when it names no outputs): JSON header + raw float32.
    binary = httpx.post(f"{server.http_url}/v2/models/digits/versions/2/infer",
                        json={**body, "parameters": {"binary_data_output": True}})
    n = int(binary.headers["Inference-Header-Content-Length"])
    header = json.loads(binary.content[:n])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 40}
    np.testing.assert_array_equal(np.frombuffer(binary.content[n:], "<f4"), np.array(output["data"], np.float32))


# ---- the simple API -------------------------------------------------------------------------------------------

def _float32(predictions) -> list[dict]:  # type: ignore[no-untyped-def]
    """Probabilities as float32: JSON prints a float32 in its shortest form, Python's repr the float64 it widens to."""
    return [{**p, "probability": np.float32(p["probability"])} for p in predictions]


def test_classify_raw_body_and_multipart_equal_grpc(server: ServerThread, image_files: dict[str, Path]) -> None:
    paths = [image_files["img0.png"], image_files["img3.jpg"], image_files["img1.png"]]
    with Client(server.address, "digits") as client:
        expected = [_float32(p.to_dict() for p in preds) for preds in client.classify(paths, top_k=3)]
    url = f"{server.http_url}/v1/models/digits/classify"
    raw = httpx.post(url, params={"top_k": 3}, content=paths[0].read_bytes(),
                     headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert _float32(raw.json()["results"][0]["predictions"]) == expected[0]
    form = httpx.post(url, params={"top_k": 3},
                      files=[("image", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths])
    answer = form.json()
    assert (answer["model"], answer["version"]) == ("digits", "2")
    assert [r["image"] for r in answer["results"]] == [p.name for p in paths]
    assert [_float32(r["predictions"]) for r in answer["results"]] == expected
    assert form.headers["x-request-id"] == answer["request_id"]


def test_every_field_is_present_whatever_its_value(server: ServerThread, image_files: dict[str, Path]) -> None:
    """proto3's JSON mapping drops zeros and empty strings; the /v1 answers keep them, so class 0 has its index."""
    answer = httpx.post(f"{server.http_url}/v1/models/digits/classify", params={"top_k": 10},
                        content=image_files["img0.png"].read_bytes()).json()
    predictions = answer["results"][0]["predictions"]
    assert all(set(p) == {"label", "index", "probability"} for p in predictions)
    assert sorted(p["index"] for p in predictions) == list(range(10))
    info = httpx.get(f"{server.http_url}/v1/models/digits").json()
    assert info["reason"] == ""  # nothing refused: present, and empty
    assert set(info) >= {"name", "version", "state", "reason", "arch", "labels", "variant", "available_versions"}


def test_list_and_get_model_as_json(server: ServerThread) -> None:
    models = httpx.get(f"{server.http_url}/v1/models").json()["models"]
    assert {m["name"] for m in models} >= {"digits", "rgb", "tampered"}
    info = httpx.get(f"{server.http_url}/v1/models/digits/versions/2").json()
    assert (info["version"], info["state"], info["input"]["height"]) == ("2", "SERVING", 28)
    assert info["verification"]["passed"] is True


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_form_upload(server: ServerThread, image_files: dict[str, Path]) -> None:
    done = subprocess.run(["curl", "-sS", "-F", f"image=@{image_files['img0.png']}",
                           f"{server.http_url}/v1/models/digits/classify?top_k=1"],
                          capture_output=True, text=True, timeout=30, check=True)
    result = json.loads(done.stdout)["results"][0]
    assert result["image"] == "img0.png"
    assert result["predictions"][0]["label"].startswith("digit_")


# ---- errors -----------------------------------------------------------------------------------------------------

INFER = "/v2/models/digits/infer"
FP32_OK = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}

ERRORS = [
    ("GET", "/v2/models/nope", None, {}, 404, "model 'nope'"),
    ("GET", "/v2/models/digits/versions/9", None, {}, 404, "version 9"),
    ("GET", "/v2/nothing-here", None, {}, 404, "Not Found"),
    ("GET", INFER, None, {}, 405, "Method Not Allowed"),
    ("POST", INFER, b"{not json", {}, 400, "the request is not valid JSON"),
    ("POST", INFER, b"[1, 2]", {}, 400, "must be a JSON object"),
    ("POST", INFER, b"[" * 100_000, {}, 400, "not valid JSON"),
    ("POST", INFER, json.dumps({"inputs": []}).encode(), {}, 400, "takes exactly one input 'input'"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "name": "x"}]}).encode(), {}, 400, "unknown input 'x'"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": [0.0] * 3}]}).encode(), {}, 400,
     "3 values, shape \\[1, 1, 28, 28\\] needs 784"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": ["a"] * 784}]}).encode(), {}, 400,
     "FP32 'data' must hold numbers only"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "shape": "1x1"}]}).encode(), {}, 400,
     "'shape' must be a list of integers"),
    ("POST", INFER, json.dumps({"inputs": [FP32_OK], "outputs": [{"name": "probs"}]}).encode(), {}, 400,
     "unknown output 'probs'"),
    ("POST", INFER, b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400,
     "Inference-Header-Content-Length is 999, but the body has 14 bytes"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": None, "parameters": {"binary_data_size": 8}}]}).encode(),
     {}, 400, "binary_data_size is 8, but 0 bytes"),
    ("POST", INFER, json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["%%"],
                                            "parameters": {"content_type": "base64"}}]}).encode(), {}, 400,
     "not valid base64"),
    ("POST", INFER, json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                            "data": ["hello"]}]}).encode(), {}, 400, "image 0: "),
    # NaN is not JSON (Python's json writes it anyway): refused by the parser; a number too large for FP32 is
    # refused by the tensor rules.
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": [[[[float("nan")] * 28] * 28]]}]},
                               allow_nan=True).encode(), {}, 400, "not valid JSON"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": [[[[1e300] * 28] * 28]]}]}).encode(), {}, 400,
     "NaN or infinite"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": [[0.0] * 400, [0.0] * 384]}]}).encode(), {}, 400,
     "'data' must be a flat list or equally nested lists of numbers"),
    ("POST", INFER, json.dumps({"inputs": [{**FP32_OK, "data": [True] * 784}]}).encode(), {}, 400,
     "FP32 'data' must hold numbers only"),
    ("POST", INFER, b'{"inputs": [' + b" " * kserve.MAX_JSON_BYTES + b"]}", {}, 413,
     "more than the 2 MiB a JSON body may have"),
    ("POST", INFER, b"x", {"Content-Encoding": "gzip"}, 400, "compressed requests are off"),
    ("POST", "/v1/models/digits/classify", b"", {}, 400, "no image"),
    ("POST", "/v1/models/digits/classify?top_k=two", b"png", {}, 400, "top_k must be an integer"),
    ("POST", "/v1/models/digits/classify", b"not an image", {}, 400, "image 0: "),
    ("POST", "/v1/models/tampered/classify", b"x", {}, 503, "tampered"),
]


@pytest.mark.parametrize(("verb", "path", "body", "headers", "status", "message"), ERRORS,
                         ids=[f"{e[0]} {e[1]} {e[5][:30]}" for e in ERRORS])
def test_errors_are_one_json_line(server: ServerThread, verb: str, path: str, body: bytes | None,
                                  headers: dict[str, str], status: int, message: str) -> None:
    answer = httpx.request(verb, server.http_url + path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert "\n" not in error
    assert __import__("re").search(message, error), error
    assert answer.headers["x-request-id"]


def test_tritonclient_raises_the_message(http) -> None:  # type: ignore[no-untyped-def]
    x = thttp.InferInput("input", [1, 1, 8, 8], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match=r"input shape must be \[N, 1, 28, 28\]"):
        http.infer("digits", [x])


def test_a_body_over_the_limit_is_413(make_server, repository) -> None:  # type: ignore[no-untyped-def]
    from tests.support.servers import base_config

    server = make_server(base_config(repository.path, models=("digits",), max_message_mb=1))
    for path in (INFER, "/v1/models/digits/classify"):
        answer = httpx.post(server.http_url + path, content=b"\0" * (2 << 20))
        assert answer.status_code == 413
        assert "larger than the 1 MiB limit (--max-message-mb)" in answer.json()["error"]
    many = [("image", (f"{i}.png", b"\0" * (300 << 10))) for i in range(5)]  # each part small, all together not
    answer = httpx.post(server.http_url + "/v1/models/digits/classify", files=many)
    assert answer.status_code == 413, answer.text


def test_metrics_count_http_calls(server: ServerThread, image_files: dict[str, Path]) -> None:
    before = sample(server, "serving_requests_total", 0.0, model="digits", method="http.Classify", code="OK")
    httpx.post(f"{server.http_url}/v1/models/digits/classify", content=image_files["img0.png"].read_bytes())
    httpx.post(f"{server.http_url}/v1/models/digits/classify", content=b"junk")
    assert sample(server, "serving_requests_total", model="digits", method="http.Classify", code="OK") == before + 1
    assert sample(server, "serving_requests_total", model="digits", method="http.Classify",
                  code="INVALID_ARGUMENT") >= 1


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=5)
    except httpx.ConnectError:
        return True
    return False


def test_stop_drains_http_requests_in_flight(make_server, repository, image_files) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import threading

    from tests.support.servers import base_config, wait_until

    server = make_server(base_config(repository.path, models=("digits",)))
    png = image_files["img0.png"].read_bytes()
    answers: list[httpx.Response] = []
    with server.hold_compute("digits") as gate:
        sender = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{server.http_url}/v1/models/digits/classify", content=png, timeout=30)))
        sender.start()
        wait_until(lambda: server.model("digits").active == 1, 10, "the request admitted")
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(10), server.loop)
        wait_until(lambda: _refused(f"{server.http_url}/v2/health/live"), 5, "the port closed to new connections")
        gate.set()
        sender.join(30)
        stopping.result(30)
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["results"][0]["predictions"]


def test_a_client_that_hangs_up_mid_body_is_cancelled_not_an_error(server: ServerThread,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's "Connection lost" while the body arrives is the client's doing: CANCELLED in the metrics and an
    info line, never INTERNAL with a traceback (an operator paged on ERROR must not be paged by any client)."""
    host, port = server.http_url.removeprefix("http://").split(":")
    labels = {"model": "digits", "method": "http.ModelInfer", "code": "CANCELLED"}
    before = sample(server, "serving_requests_total", 0.0, **labels)
    with caplog.at_level(logging.INFO, logger="serving"):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"in")
            wait_until(lambda: sample(server, "serving_inflight_requests", 0.0, method="http.ModelInfer") == 1, 10,
                       "the request is in flight")
        wait_until(lambda: sample(server, "serving_requests_total", 0.0, **labels) == before + 1, 10,
                   "the hang-up is counted as CANCELLED")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any(r.getMessage() == "http.ModelInfer CANCELLED" for r in caplog.records)


def test_malformed_http_is_a_rate_limited_warning_without_a_traceback(server: ServerThread,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """What aiohttp's parser refuses (a bad header, HTTP version, length or chunk) is answered 400 and logged as one
    warning a second, no traceback; before, each was an ERROR with aiohttp's traceback."""
    host, port = server.http_url.removeprefix("http://").split(":")
    requests = [b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"]
    with caplog.at_level(logging.INFO):
        for request in requests:
            with socket.create_connection((host, int(port))) as s:
                s.sendall(request)
                s.settimeout(10)
                assert s.recv(64).startswith(b"HTTP/1.0 400 Bad Request"), request
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], \
        [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.http.protocol"]
    assert warnings, "no warning for the malformed requests"
    assert all(w.startswith("malformed HTTP request refused (400): ") for w in warnings), warnings


def test_a_declared_length_over_the_limit_is_refused_from_the_header(server: ServerThread) -> None:
    """A Content-Length of 10 GB is answered 413 at once: the server neither reads nor waits for the body."""
    host, port = server.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n")
        s.settimeout(10)  # well under --http-timeout-s (30 s), the wait for a body that never comes
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"larger than the 64 MiB limit (--max-message-mb)" in answer, answer
