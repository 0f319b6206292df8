"""Every status code with its message, health transitions, batching under concurrency, back-pressure, deadlines,
shutdown — on real servers."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.errors import (
    DeadlineExceeded,
    InvalidInput,
    Kind,
    ModelNotFound,
    ModelRejected,
    NotReady,
    Overloaded,
    TooLarge,
)
from serving.grpc.converters import array_to_tensor
from serving.grpc.status import STATUS_CODES, status_for
from serving.http.status import HTTP_STATUS, http_status_for
from serving.runtime.predictor import Predictor
from tests.support.images import draw_image, encode
from tests.support.repositories import Repo
from tests.support.servers import ServerThread, base_config, sample, total, wait_until

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


def test_every_error_kind_has_a_grpc_code_and_an_http_status() -> None:
    assert set(STATUS_CODES) == set(Kind) == set(HTTP_STATUS)
    assert http_status_for(TooLarge("big"), "r") == (413, Kind.TOO_LARGE, "big")
    assert http_status_for(Overloaded("full"), "r") == (429, Kind.OVERLOADED, "full")


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


def test_health_goes_from_not_serving_to_serving(make_server: MakeServer, serving_repo: Repo,
                                                 image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits", "tampered")), load=False)
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


def test_only_tampered_models_leave_the_server_not_serving(make_server: MakeServer, serving_repo: Repo) -> None:
    server = make_server(base_config(serving_repo.path, models=("tampered", "corrupt")))
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_result(
        make_server: MakeServer, serving_repo: Repo, digits: Predictor, image_files: dict[str, Path]) -> None:
    # A 60 s batching window and a 30 s deadline: the answers come back only if the sixth image, reaching max_batch,
    # closed the batch early — nobody waited for the window.
    server = make_server(base_config(serving_repo.path, models=("digits",), max_batch=6, max_queue_delay_ms=60_000))
    paths = list(image_files.values())
    expected = digits.classify(paths, top_k=3)
    stub = classify_stub(server)
    barrier = threading.Barrier(len(paths))

    def call(i: int) -> list[int]:
        barrier.wait(10)
        response = stub.Classify(ic_pb2.ClassifyRequest(model="digits", top_k=3, images=[image(paths[i])]),
                                 timeout=30)
        return [p.index for p in response.results[0].predictions]

    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(call, range(len(paths))))
    assert results == [[p.index for p in preds] for preds in expected]
    calls = sample(server, "serving_batch_size_count", model="digits")
    images = sample(server, "serving_batch_size_sum", model="digits")
    assert images == len(paths)
    assert calls == 1, f"{calls} onnxruntime calls for {images} images: not one batch"


def test_full_queue_is_refused_at_once(make_server: MakeServer, serving_repo: Repo,
                                       image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits",), max_queue=1))
    stub = classify_stub(server)
    batcher = server.model("digits").batcher
    request = ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])
    # The first request waits in a held batch, the second in the queue, which (max_queue 1) is then full.
    with server.held_batch("digits", lambda: stub.Classify.future(request, timeout=30)) as computing:
        queued = stub.Classify.future(request, timeout=30)
        wait_until(lambda: batcher.depth == 1, 10, "the second request in the queue")
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "model 'digits': queue full (1 requests waiting); retry later",
               lambda: stub.Classify(request, timeout=10))
        assert not computing.done()  # refused at once, not once the queue had room
        assert not queued.done()
    assert computing.result().results
    assert queued.result().results


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
        make_server: MakeServer, serving_repo: Repo, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits",)))
    stub = classify_stub(server)
    batcher = server.model("digits").batcher
    request = ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])
    with server.held_batch("digits", lambda: stub.Classify.future(request, timeout=30)) as computing:
        # The second waits in the queue behind the held batch until its deadline passes.
        expect(grpc.StatusCode.DEADLINE_EXCEEDED, "", lambda: stub.Classify(request, timeout=0.3))
        wait_until(lambda: total(server, "serving_dropped_requests_total") == 1, 10, "the expired request dropped")
        assert batcher.depth == 0
    assert computing.result().results
    # One call, of the held batch's one image: the expired request left the queue and never ran.
    assert sample(server, "serving_batch_size_count", model="digits") == 1
    assert sample(server, "serving_batch_size_sum", model="digits") == 1


def test_message_too_large(make_server: MakeServer, serving_repo: Repo) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits",), max_message_mb=1))
    big = ic_pb2.ClassifyRequest(model="digits", images=[ic_pb2.Image(encoded=b"\x00" * (2 << 20))])
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max", lambda: classify_stub(server).Classify(big))


def test_unexpected_errors_are_internal_with_a_logged_request_id(
        make_server: MakeServer, serving_repo: Repo, image_files: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits",)))
    # Break the model's compute thread pool: the next batch fails with an error no handler expects.
    for instance in server.server.registry.models["digits"].batcher.instances:
        instance.executor.shutdown()
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
        make_server: MakeServer, serving_repo: Repo, image_files: dict[str, Path]) -> None:
    server = make_server(base_config(serving_repo.path, models=("digits",)))
    stub = classify_stub(server)
    request = ic_pb2.ClassifyRequest(model="digits", images=[image(image_files["img0.png"])])
    refusing = threading.Event()
    grpc_stop = server.server.grpc.stop

    async def stop_and_tell(grace: float | None) -> None:
        # gRPC's stop() refuses new calls in its first step, then waits out the grace period: tell the test between.
        stopping = asyncio.ensure_future(grpc_stop(grace))
        await asyncio.sleep(0)  # one loop pass, in which that first step runs (a yield, not a wait for time)
        refusing.set()
        await stopping

    server.server.grpc.stop = stop_and_tell
    with server.held_batch("digits", lambda: stub.Classify.future(request, timeout=10)) as accepted:
        stopping = threading.Thread(target=server.call, args=(server.server.stop(5.0),))
        stopping.start()
        assert refusing.wait(10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(request, timeout=5)
        # Not served either way: UNAVAILABLE when the client saw the server's GOAWAY before sending, CANCELLED when
        # the call reached the transport first and the shutdown cancelled it (both seen in full runs).
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), refused.value
        assert not accepted.done()  # still in progress when the new call was refused
    assert accepted.result().results  # finished during the grace period
    stopping.join(10)
    assert not stopping.is_alive()
