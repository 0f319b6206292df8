"""Every status code with its message, health transitions, batching under concurrency, back-pressure, deadlines,
shutdown — on real servers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_fixtures import Repo, ServerThread, base_config, draw_image, encode, scrape

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.errors import DeadlineExceeded, InvalidInput, ModelNotFound, ModelRejected, NotReady, Overloaded
from serving.grpc.converters import array_to_tensor
from serving.grpc.status import status_for
from serving.runtime import loader

MakeServer = Callable[..., ServerThread]


def classify_stub(server: ServerThread) -> ic_grpc.ImageClassifierStub:
    return ic_grpc.ImageClassifierStub(grpc.insecure_channel(server.address))


def image(path: Path) -> ic_pb2.Image:
    return ic_pb2.Image(encoded=path.read_bytes())


def expect(code: grpc.StatusCode, message: str, call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == code, e.value.details()
    assert message in e.value.details(), e.value.details()
    return e.value


def test_status_mapping_is_total() -> None:
    cases = {InvalidInput("a"): grpc.StatusCode.INVALID_ARGUMENT, ModelNotFound("b"): grpc.StatusCode.NOT_FOUND,
             NotReady("c"): grpc.StatusCode.UNAVAILABLE, ModelRejected("d"): grpc.StatusCode.UNAVAILABLE,
             Overloaded("e"): grpc.StatusCode.RESOURCE_EXHAUSTED,
             DeadlineExceeded("f"): grpc.StatusCode.DEADLINE_EXCEEDED}
    for exc, code in cases.items():
        assert status_for(exc) == (code, str(exc))
    assert status_for(KeyError("secret internals"), "rid-1") == (grpc.StatusCode.INTERNAL,
                                                                  "internal error (request id rid-1)")


def test_client_errors(server: ServerThread, image_files: dict[str, Path]) -> None:
    stub = classify_stub(server)
    png = image(image_files["img0.png"])
    bad_tensor = ic_pb2.Image(tensor=array_to_tensor(np.zeros((3, 28, 28), np.float32)))
    bomb = ic_pb2.Image(encoded=encode(draw_image(0, (8000, 6000), "L"), "PNG"))  # 48 MP, a 60 kB file
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    expect(invalid, "no images in the request", lambda: stub.Classify(ic_pb2.ClassifyRequest(model="digits")))
    expect(invalid, "image 1: cannot decode image", lambda: stub.Classify(ic_pb2.ClassifyRequest(
        model="digits", images=[png, ic_pb2.Image(encoded=b"GIF89a garbage")])))
    expect(invalid, "image 0: tensor shape must be [1, 28, 28] (C, H, W), got [3, 28, 28]",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="digits", images=[bad_tensor])))
    expect(invalid, "image 0: image is 8000x6000 = 48000000 pixels, more than the limit of 40000000",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="digits", images=[bomb])))
    expect(invalid, "top_k must be between 1 and 10 (the number of classes), got 11",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="digits", images=[png], top_k=11)))
    expect(invalid, "no model name given", lambda: stub.Classify(ic_pb2.ClassifyRequest(images=[png])))
    expect(grpc.StatusCode.NOT_FOUND, "model 'nope' not found (this server has: corrupt, digits, rgb, tampered)",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="nope", images=[png])))
    expect(grpc.StatusCode.NOT_FOUND, "model 'digits' version 1 is not loaded: this server serves version 2",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="digits", version=1, images=[png])))
    expect(grpc.StatusCode.NOT_FOUND, "model 'digits' has no version 9 (versions: [1, 2])",
           lambda: stub.GetModel(ic_pb2.GetModelRequest(name="digits", version=9)))
    expect(grpc.StatusCode.UNAVAILABLE, "model 'tampered' is not serving: golden self-check failed",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="tampered", images=[png])))
    expect(grpc.StatusCode.UNAVAILABLE, "model 'corrupt' is not serving: model.onnx sha256 is",
           lambda: stub.Classify(ic_pb2.ClassifyRequest(model="corrupt", images=[png])))


def test_open_inference_protocol_errors(server: ServerThread) -> None:
    stub = kserve_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor
    x = np.zeros((1, 1, 28, 28), np.float32)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "input 'input': datatype INT64 is not supported",
           lambda: stub.ModelInfer(kserve_pb2.ModelInferRequest(
               model_name="digits", inputs=[tensor(name="input", datatype="INT64", shape=[1])],
               raw_input_contents=[b"\x00" * 8])))
    expect(grpc.StatusCode.INVALID_ARGUMENT, "input shape must be [N, 1, 28, 28] with N >= 1, got [1, 28, 28]",
           lambda: stub.ModelInfer(kserve_pb2.ModelInferRequest(
               model_name="digits", inputs=[tensor(name="input", datatype="FP32", shape=[1, 28, 28])],
               raw_input_contents=[x.tobytes()])))
    expect(grpc.StatusCode.NOT_FOUND, "no model version 'latest' (versions are integers)",
           lambda: stub.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="digits", version="latest")))
    expect(grpc.StatusCode.NOT_FOUND, "model 'nope' not found",
           lambda: stub.ModelConfig(kserve_pb2.ModelConfigRequest(name="nope")))


def test_health_goes_from_not_serving_to_serving(make_server: MakeServer, repo: Repo,
                                                 image_files: dict[str, Path]) -> None:
    server = make_server(base_config(repo.path, models=("digits", "tampered")), load=False)
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    infer = kserve_grpc.GRPCInferenceServiceStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    assert status("") == status("digits") == status("tampered") == not_serving
    assert not infer.ServerReady(kserve_pb2.ServerReadyRequest()).ready
    assert infer.ServerLive(kserve_pb2.ServerLiveRequest()).live
    expect(grpc.StatusCode.UNAVAILABLE, "model 'digits' is still loading", lambda: classify_stub(server).Classify(
        ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])))
    watch = health.Watch(health_pb2.HealthCheckRequest(service="digits"), timeout=30)
    assert next(watch).status == not_serving
    assert server.load()
    assert next(watch).status == serving  # pushed to the watcher once the golden check passed
    watch.cancel()
    assert status("") == serving
    assert status("tampered") == not_serving
    assert infer.ServerReady(kserve_pb2.ServerReadyRequest()).ready
    assert infer.ModelReady(kserve_pb2.ModelReadyRequest(name="digits")).ready


def test_only_tampered_models_leave_the_server_not_serving(make_server: MakeServer, repo: Repo) -> None:
    server = make_server(base_config(repo.path, models=("tampered", "corrupt")))
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_result(
        make_server: MakeServer, repo: Repo, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(repo.path, models=("digits",), max_batch=6, max_queue_delay_ms=500))
    predictor = loader.load(repo.path, "digits", threads=1).predictor
    paths = list(image_files.values())
    expected = predictor.classify(paths, top_k=3)
    stub = classify_stub(server)
    barrier = threading.Barrier(len(paths))

    def call(i: int) -> list[int]:
        barrier.wait(10)
        response = stub.Classify(ic_pb2.ClassifyRequest(model="digits", top_k=3, images=[image(paths[i])]),
                                 timeout=30)
        return [p.index for p in response.results[0].predictions]

    started = time.perf_counter()
    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(call, range(len(paths))))
    assert results == [[p.index for p in preds] for preds in expected]
    # six images reached max_batch, so nobody waited for the 500 ms window
    assert time.perf_counter() - started < 0.45
    samples = scrape(server)
    calls = samples[("serving_batch_size_count", (("model", "digits"),))]
    images = samples[("serving_batch_size_sum", (("model", "digits"),))]
    assert images == len(paths)
    assert calls < len(paths), f"{calls} onnxruntime calls for {images} images: nothing was batched"


def test_full_queue_and_expired_deadlines(make_server: MakeServer, repo: Repo, image_files: dict[str, Path]) -> None:
    # A long batching window keeps the first request queued: the queue (1) is then full.
    server = make_server(base_config(repo.path, models=("digits",), max_queue=1, max_queue_delay_ms=1500))
    stub = classify_stub(server)
    request = ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])
    first = stub.Classify.future(request, timeout=10)
    deadline = time.monotonic() + 5
    while scrape(server).get(("serving_queue_depth", (("model", "digits"),))) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "model 'digits': queue full (1 requests waiting); retry later",
           lambda: stub.Classify(request, timeout=10))
    assert time.perf_counter() - started < 0.5  # refused at once, not after the window
    assert first.result().results
    # A request whose deadline passes in the queue is dropped, never computed.
    computed = scrape(server)[("serving_batch_size_count", (("model", "digits"),))]
    expect(grpc.StatusCode.DEADLINE_EXCEEDED, "", lambda: stub.Classify(request, timeout=0.3))
    time.sleep(1.6)  # past the batching window that would have run it
    samples = scrape(server)
    assert samples[("serving_batch_size_count", (("model", "digits"),))] == computed
    dropped = sum(v for (name, labels), v in samples.items() if name == "serving_dropped_requests_total")
    assert dropped == 1


def test_message_too_large(make_server: MakeServer, repo: Repo) -> None:
    server = make_server(base_config(repo.path, models=("digits",), max_message_mb=1))
    big = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=b"\x00" * (2 << 20))])
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max", lambda: classify_stub(server).Classify(big))


def test_unexpected_errors_are_internal_with_a_logged_request_id(
        make_server: MakeServer, repo: Repo, image_files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(base_config(repo.path, models=("digits",)))
    # Break the model's compute thread pool: the next batch fails with an error no handler expects.
    server.server.registry.models["digits"].batcher._executor.shutdown()
    stub = classify_stub(server)
    with caplog.at_level(logging.ERROR):
        error = expect(grpc.StatusCode.INTERNAL, "internal error (request id req-42)", lambda: stub.Classify(
            ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])]),
            metadata=(("x-request-id", "req-42"),)))
    assert "cannot schedule new futures" not in error.details()  # internals stay in the log
    records = [r for r in caplog.records if r.name == "serving.rpc" and r.levelno == logging.ERROR]
    assert any("cannot schedule new futures" in r.getMessage() and r.exc_info for r in records)
    assert ("x-request-id", "req-42") in error.trailing_metadata()


def test_graceful_stop_finishes_accepted_requests_and_refuses_new_ones(
        make_server: MakeServer, repo: Repo, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(repo.path, models=("digits",), max_queue_delay_ms=400))
    stub = classify_stub(server)
    request = ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])
    accepted = stub.Classify.future(request, timeout=10)
    time.sleep(0.1)  # accepted and waiting in the batching window
    stopping = threading.Thread(target=server.call, args=(server.server.stop(5.0),))
    stopping.start()
    time.sleep(0.1)
    expect(grpc.StatusCode.UNAVAILABLE, "", lambda: stub.Classify(request, timeout=5))
    assert accepted.result().results  # finished during the grace period
    stopping.join(10)
    assert not stopping.is_alive()
