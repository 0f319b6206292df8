"""The gRPC server end to end, in-process on a free loopback port: both APIs, health, reflection, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import grpc_service_pb2_grpc as kserve_grpc
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import imageclassifier_pb2_grpc as ic_grpc
from serving.client import Client
from serving.grpc.converters import array_to_tensor
from serving.runtime import loader
from serving.runtime.predictor import Predictor
from tests.support.repositories import Repo
from tests.support.runs import DIGITS_LABELS
from tests.support.servers import ServerThread, sample


@pytest.fixture(scope="module")
def channel(server: ServerThread):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> ic_grpc.ImageClassifierStub:
    return ic_grpc.ImageClassifierStub(channel)


# ---- imageclassifier.v1 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["digits", "rgb"])
def test_classify_files_equals_predictor_and_pytorch(model: str, serving_repo: Repo, stub: ic_grpc.ImageClassifierStub,
                                                     image_files: dict[str, Path], torch_reference) -> None:  # type: ignore[no-untyped-def]
    paths = list(image_files.values())
    predictor = loader.load(serving_repo.path, model, threads=1).predictor
    k = predictor.num_classes
    response = stub.Classify(ic_pb2.ClassifyRequest(
        model=model, top_k=k, images=[ic_pb2.Image(encoded=p.read_bytes()) for p in paths]))
    assert response.model == model
    assert response.version == predictor.version
    assert len(response.results) == len(paths)
    local = predictor.classify(paths, top_k=k)
    for path, result, expected in zip(paths, response.results, local, strict=True):
        got = {p.index: p.probability for p in result.predictions}
        assert [p.index for p in result.predictions] == [p.index for p in expected], path.name
        np.testing.assert_allclose([got[p.index] for p in expected], [p.probability for p in expected], atol=1e-6)
        reference = torch_reference(model, path)
        assert result.predictions[0].index == int(np.argmax(reference))
        np.testing.assert_allclose([got[i] for i in range(k)], reference, atol=1e-5)


def test_client_classify_paths_bytes_and_tensors(server: ServerThread, digits: Predictor,
                                                 image_files: dict[str, Path]) -> None:
    path = image_files["img0.png"]
    with Client(server.address, model="digits") as client:
        by_path, by_bytes, by_tensor = client.classify([path, path.read_bytes(), digits.preprocess(path)], top_k=3)
        assert client.health() == "SERVING"
        assert client.health("digits") == "SERVING"
    assert by_path == by_bytes
    assert [p.index for p in by_tensor] == [p.index for p in by_path]
    assert [p.index for p in by_path] == [p.index for p in digits.classify([path], top_k=3)[0]]
    assert len(by_path) == 3
    assert by_path[0].probability >= by_path[1].probability >= by_path[2].probability


def test_default_top_k_and_request_id(stub: ic_grpc.ImageClassifierStub, image_files: dict[str, Path]) -> None:
    image = ic_pb2.Image(encoded=image_files["img1.png"].read_bytes())
    response = stub.Classify(ic_pb2.ClassifyRequest(model="digits", images=[image], request_id="abc"))
    assert len(response.results[0].predictions) == 5
    assert response.request_id == "abc"
    response, call = stub.Classify.with_call(ic_pb2.ClassifyRequest(model="rgb", images=[image]),
                                             metadata=(("x-request-id", "from-header"),))
    assert len(response.results[0].predictions) == 4  # fewer classes than the default 5
    assert response.request_id == "from-header"
    assert ("x-request-id", "from-header") in call.trailing_metadata()


def test_classify_stream_answers_every_message(stub: ic_grpc.ImageClassifierStub,
                                               image_files: dict[str, Path]) -> None:
    good = [ic_pb2.ClassifyRequest(model="digits", top_k=2, request_id=f"ok-{i}",
                                   images=[ic_pb2.Image(encoded=p.read_bytes())])
            for i, p in enumerate(image_files.values())]
    bad = ic_pb2.ClassifyRequest(model="digits", request_id="bad", images=[ic_pb2.Image(encoded=b"nope")])
    missing = ic_pb2.ClassifyRequest(model="nope", request_id="missing", images=[ic_pb2.Image(encoded=b"x")])
    answers = {r.request_id: r for r in stub.ClassifyStream(iter([*good[:3], bad, missing, *good[3:]]), timeout=30)}
    assert set(answers) == {*(r.request_id for r in good), "bad", "missing"}
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "image 0: cannot decode image" in answers["bad"].error.message
    assert answers["missing"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    unary = {r.request_id: stub.Classify(r) for r in good}
    for rid, response in unary.items():
        assert answers[rid].response.results == response.results


def test_list_and_get_model(stub: ic_grpc.ImageClassifierStub, serving_repo: Repo) -> None:
    models = {m.name: m for m in stub.ListModels(ic_pb2.ListModelsRequest()).models}
    assert set(models) == {"corrupt", "digits", "rgb", "tampered"}
    assert models["digits"].state == ic_pb2.ModelInfo.SERVING
    assert models["digits"].version == 2
    assert list(models["digits"].available_versions) == [1, 2]
    assert models["tampered"].state == ic_pb2.ModelInfo.NOT_SERVING
    assert models["tampered"].reason.startswith("golden self-check failed")
    assert models["corrupt"].reason.startswith("model.onnx sha256 is ")
    info = stub.GetModel(ic_pb2.GetModelRequest(name="digits"))
    doc = json.loads((serving_repo.path / "digits" / "2" / "model.json").read_text())
    assert list(info.labels) == list(DIGITS_LABELS) == doc["labels"]
    assert (info.input.name, info.input.channels, info.input.height, info.input.width) == ("input", 1, 28, 28)
    assert (info.output.name, info.output.classes) == ("logits", 10)
    assert info.preprocess.color_mode == "L"
    assert list(info.preprocess.size) == [28, 28]
    assert info.preprocess.mean == pytest.approx(doc["preprocess"]["mean"])
    assert info.verification.passed
    assert info.verification.golden_samples > 0
    assert info.verification.golden_max_abs_diff <= info.verification.golden_atol == doc["golden_atol"]
    assert info.onnx_sha256 == doc["onnx_sha256"]


# ---- Open Inference Protocol through tritonclient -------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton(server: ServerThread):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as tritonclient

    client = tritonclient.InferenceServerClient(server.address)
    yield client
    client.close()


def test_server_and_model_metadata(triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits")
    assert triton.is_model_ready("digits", "2")
    assert not triton.is_model_ready("tampered")
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "resnet-serving"
    assert "model_configuration" in meta["extensions"]
    model = triton.get_model_metadata("digits", as_json=True)
    assert model["versions"] == ["2"]
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]


def test_model_config(triton, server: ServerThread) -> None:  # type: ignore[no-untyped-def]
    config = triton.get_model_config("digits", as_json=True)["config"]
    assert config["name"] == "digits"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == server.config.max_batch
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                                "dims": ["1", "28", "28"]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["10"]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"


def test_model_infer_fp32(triton, digits: Predictor, image_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as tc

    x = np.stack([digits.preprocess(p) for p in image_files.values()])
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("digits", [tensor], outputs=[tc.InferRequestedOutput("logits")], request_id="r1")
    logits = result.as_numpy("logits")
    assert logits.shape == (len(x), 10)
    assert result.get_response().id == "r1"
    np.testing.assert_allclose(logits, digits.run(x), atol=1e-5)


def test_model_infer_bytes(triton, digits: Predictor, image_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as tc

    paths = list(image_files.values())
    encoded = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    tensor = tc.InferInput("input", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(encoded)
    logits = triton.infer("digits", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(logits, digits.run(np.stack([digits.preprocess(p) for p in paths])), atol=1e-5)


def test_model_infer_typed_contents(channel: grpc.Channel, digits: Predictor,
                                    image_files: dict[str, Path]) -> None:
    x = digits.preprocess(image_files["img3.jpg"])[None]
    request = kserve_pb2.ModelInferRequest(model_name="digits", inputs=[kserve_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=x.shape,
        contents=kserve_pb2.InferTensorContents(fp32_contents=x.ravel().tolist()))])
    response = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(logits, digits.run(x), atol=1e-5)


def test_model_stream_infer(channel: grpc.Channel, digits: Predictor, image_files: dict[str, Path]) -> None:
    x = digits.preprocess(image_files["img0.png"])[None]
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    requests = [kserve_pb2.ModelInferRequest(model_name="digits", id="a", inputs=[tensor],
                                             raw_input_contents=[x.tobytes()]),
                kserve_pb2.ModelInferRequest(model_name="digits", id="b", inputs=[tensor], raw_input_contents=[b""])]
    answers = {r.infer_response.id: r for r in kserve_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        iter(requests), timeout=30)}
    assert not answers["a"].error_message
    np.testing.assert_allclose(np.frombuffer(answers["a"].infer_response.raw_output_contents[0], "<f4"),
                               digits.run(x)[0], atol=1e-5)
    assert answers["b"].error_message.startswith("INVALID_ARGUMENT: input 'input': the raw data has 0 bytes")


# ---- health, reflection, metrics ----------------------------------------------------------------------------------

def test_health_overall_and_per_model(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> str:
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    assert status("") == "SERVING"
    assert status("imageclassifier.v1.ImageClassifier") == "SERVING"
    assert status("digits") == status("rgb") == "SERVING"
    assert status("tampered") == status("corrupt") == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as e:
        status("nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    assert {"imageclassifier.v1.ImageClassifier", "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(database.get_services())
    pool = DescriptorPool(database)
    method = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ModelInfer"]
    assert method.input_type.fields_by_name["raw_input_contents"].number == 7
    classify = pool.FindMessageTypeByName("imageclassifier.v1.ClassifyRequest")
    assert [f.name for f in classify.fields] == ["model", "version", "images", "top_k", "request_id"]


def test_metrics_count_requests_by_model_and_code(server: ServerThread, stub: ic_grpc.ImageClassifierStub,
                                                  image_files: dict[str, Path]) -> None:
    def count(code: str) -> float:
        return sample(server, "serving_requests_total", 0.0, code=code, method="Classify", model="rgb")

    ok, invalid = count("OK"), count("INVALID_ARGUMENT")
    stub.Classify(ic_pb2.ClassifyRequest(model="rgb", images=[ic_pb2.Image(encoded=image_files["img1.png"]
                                                                           .read_bytes())]))
    with pytest.raises(grpc.RpcError):
        stub.Classify(ic_pb2.ClassifyRequest(model="rgb", images=[ic_pb2.Image(encoded=b"junk")]))
    assert (count("OK"), count("INVALID_ARGUMENT")) == (ok + 1, invalid + 1)
    assert sample(server, "serving_model_ready", model="digits", version="2") == 1
    assert sample(server, "serving_model_ready", model="tampered", version="1") == 0
    assert sample(server, "serving_compute_duration_seconds_count", model="rgb") >= 1
    assert sample(server, "serving_inflight_requests", method="Classify") >= 0  # present, whatever its value


def test_tensor_images_in_classify(stub: ic_grpc.ImageClassifierStub, digits: Predictor,
                                   image_files: dict[str, Path]) -> None:
    x = digits.preprocess(image_files["img4.png"])
    response = stub.Classify(ic_pb2.ClassifyRequest(model="digits", top_k=1,
                                                    images=[ic_pb2.Image(tensor=array_to_tensor(x))]))
    assert response.results[0].predictions[0].index == digits.classify([x], top_k=1)[0][0].index
