"""Protobuf ↔ the data plane's neutral types, and the input rules they feed, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract import api, tensors
from serving.contract.api import RequestedOutput, SharedMemoryRef
from serving.contract.manifest import ModelManifest
from serving.errors import InvalidInput
from serving.grpc import converters
from tests.support.repositories import Repo

Input = kserve_pb2.ModelInferRequest.InferInputTensor
Output = kserve_pb2.ModelInferRequest.InferRequestedOutputTensor


@pytest.fixture(scope="module")
def manifest(repository: Repo) -> ModelManifest:
    return ModelManifest.load(repository.path / "digits" / "1" / "model.json")


def test_bytes_elements_round_trip() -> None:
    items = [b"", b"\x89PNG...", bytes(range(256)) * 3]
    raw = tensors.encode_bytes_elements(items)
    assert raw[:4] == b"\x00\x00\x00\x00"
    assert raw[4:8] == (7).to_bytes(4, "little")
    assert tensors.decode_bytes_elements(raw) == items


@pytest.mark.parametrize(("raw", "message"), [(b"\x05\x00", "truncated element length"),
                                              (b"\x05\x00\x00\x00abc", "element of 5 bytes runs past the end")])
def test_malformed_bytes_elements(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensors.decode_bytes_elements(raw)


def test_tensor_round_trip() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(converters.tensor_to_array(converters.array_to_tensor(x)), x)
    values = ic_pb2.Tensor(shape=[1, 3, 4], values=x.ravel().tolist())
    np.testing.assert_array_equal(converters.tensor_to_array(values), x)


@pytest.mark.parametrize(("tensor", "message"), [
    (ic_pb2.Tensor(shape=[1, 2], data=b"\x00" * 4), "tensor data has 4 bytes, shape \\[1, 2\\] float32 needs 8"),
    (ic_pb2.Tensor(shape=[2], values=[1.0]), "tensor has 1 values, shape \\[2\\] needs 2"),
    (ic_pb2.Tensor(shape=[0, 2]), "positive dimensions"),
    (ic_pb2.Tensor(shape=[1], data=b"\x00" * 4, values=[1.0]), "both data and values"),
])
def test_bad_tensors(tensor: ic_pb2.Tensor, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        converters.tensor_to_array(tensor)


def test_images_from_request_keeps_order_and_kinds() -> None:
    x = np.zeros((1, 28, 28), np.float32)
    request = ic_pb2.ClassifyRequest(images=[ic_pb2.Image(encoded=b"png"), ic_pb2.Image(
        tensor=converters.array_to_tensor(x))])
    encoded, tensor = converters.images_from_request(request)
    assert encoded == b"png"
    np.testing.assert_array_equal(tensor, x)
    assert converters.images_from_request(ic_pb2.ClassifyRequest()) == []  # refused by the data plane, once
    with pytest.raises(InvalidInput, match="image 1 is empty"):
        converters.images_from_request(ic_pb2.ClassifyRequest(images=[ic_pb2.Image(encoded=b"x"), ic_pb2.Image()]))


def infer_request(*inputs: Input, raw: list[bytes] | None = None) -> kserve_pb2.ModelInferRequest:
    return kserve_pb2.ModelInferRequest(model_name="digits", inputs=list(inputs), raw_input_contents=raw or [])


def infer_input(request: kserve_pb2.ModelInferRequest, manifest: ModelManifest) -> np.ndarray | list[bytes]:
    """What the data plane reads from a ModelInfer request: its one input, checked."""
    return tensors.request_input(manifest, converters.infer_request(request, "rid", None).inputs)


def test_fp32_raw_and_typed_contents_give_the_same_array(manifest: ModelManifest) -> None:
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    raw = infer_input(infer_request(Input(name="input", datatype="FP32", shape=x.shape),
                                                raw=[x.tobytes()]), manifest)
    typed = infer_input(infer_request(Input(
        name="input", datatype="FP32", shape=x.shape,
        contents=kserve_pb2.InferTensorContents(fp32_contents=x.ravel().tolist()))), manifest)
    np.testing.assert_array_equal(raw, x)
    np.testing.assert_array_equal(typed, x)


def test_bytes_input_raw_and_typed(manifest: ModelManifest) -> None:
    items = [b"one", b"two"]
    raw = infer_request(Input(name="input", datatype="BYTES", shape=[2]),
                        raw=[tensors.encode_bytes_elements(items)])
    typed = infer_request(Input(name="input", datatype="BYTES", shape=[2, 1],
                                contents=kserve_pb2.InferTensorContents(bytes_contents=items)))
    assert infer_input(raw, manifest) == infer_input(typed, manifest) == items


@pytest.mark.parametrize(("request_", "message"), [
    (infer_request(), "takes exactly one input 'input' \\(FP32 \\[N, 1, 28, 28\\] or BYTES \\[N\\]"),
    (infer_request(Input(name="x", datatype="FP32", shape=[1, 1, 28, 28])), "unknown input 'x'"),
    (infer_request(Input(name="input", datatype="FP64", shape=[1, 1, 28, 28])), "datatype FP64 is not supported"),
    (infer_request(Input(name="input", datatype="FP32", shape=[1, 1, 28, 28]), raw=[b"\x00" * 8]),
     "the raw data has 8 bytes, FP32 \\[1, 1, 28, 28\\] needs 3136"),
    (infer_request(Input(name="input", datatype="BYTES", shape=[3]), raw=[tensors.encode_bytes_elements([b"a"])]),
     "BYTES shape must be \\[N\\] or \\[N, 1\\].*got shape \\[3\\] with 1 elements"),
])
def test_bad_infer_inputs(request_: kserve_pb2.ModelInferRequest, message: str, manifest: ModelManifest) -> None:
    with pytest.raises(InvalidInput, match=message):
        infer_input(request_, manifest)


def test_unknown_requested_output(manifest: ModelManifest) -> None:
    request = kserve_pb2.ModelInferRequest(outputs=[kserve_pb2.ModelInferRequest.InferRequestedOutputTensor(
        name="probs")])
    with pytest.raises(InvalidInput, match="unknown output 'probs'; model 'digits' has 'logits'"):
        tensors.check_outputs(manifest, converters.infer_request(request, "rid", None).outputs)


def test_raw_contents_must_match_the_inputs() -> None:
    request = infer_request(Input(name="input", datatype="FP32", shape=[1]), raw=[b"", b""])
    with pytest.raises(InvalidInput, match=r"^2 raw_input_contents for 1 inputs$"):
        converters.infer_request(request, "rid", None)


def test_infer_request_keeps_what_the_data_plane_needs() -> None:
    request = kserve_pb2.ModelInferRequest(
        model_name="digits", model_version="3", id="client-id",
        inputs=[Input(name="input", datatype="FP32", shape=[4, 1, 28, 28])], raw_input_contents=[b"x"],
        outputs=[kserve_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")])
    neutral = converters.infer_request(request, "rid-7", 12.5)
    assert (neutral.model, neutral.version, neutral.id, neutral.deadline) == ("digits", "3", "rid-7", 12.5)
    assert neutral.batch_size == 4
    assert list(neutral.outputs) == [RequestedOutput("logits")]
    assert neutral.inputs[0].raw == b"x"
    assert neutral.inputs[0].values is None


def test_classification_and_shared_memory_parameters_become_fields() -> None:
    """What tritonclient sets: InferRequestedOutput(class_count=3), InferInput/Output.set_shared_memory(...)."""
    request = kserve_pb2.ModelInferRequest(inputs=[Input(name="input", datatype="FP32", shape=[1, 1, 28, 28])],
                                           outputs=[Output(name="logits"), Output(name="other")])
    request.inputs[0].parameters["shared_memory_region"].string_param = "in"
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 3136
    request.outputs[0].parameters["classification"].int64_param = 3
    request.outputs[1].parameters["shared_memory_region"].string_param = "out"
    request.outputs[1].parameters["shared_memory_byte_size"].int64_param = 40
    request.outputs[1].parameters["shared_memory_offset"].int64_param = 8
    neutral = converters.infer_request(request, "rid", None)
    assert neutral.inputs[0].shm == SharedMemoryRef("in", 3136, 0)
    assert (neutral.inputs[0].raw, neutral.inputs[0].values) == (None, None)
    assert list(neutral.outputs) == [RequestedOutput("logits", 3), RequestedOutput("other", 0,
                                                                                    SharedMemoryRef("out", 40, 8))]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("classification", "three", "parameter 'classification' must be an integer"),
    ("shared_memory_region", 5, "parameter 'shared_memory_region' must be a string"),
])
def test_parameters_of_the_wrong_type_are_refused(key: str, value: object, message: str) -> None:
    request = kserve_pb2.ModelInferRequest(outputs=[Output(name="logits")])
    field = "string_param" if isinstance(value, str) else "int64_param"
    setattr(request.outputs[0].parameters[key], field, value)
    with pytest.raises(InvalidInput, match=message):
        converters.infer_request(request, "rid", None)


def test_a_region_without_a_size_is_refused() -> None:
    request = kserve_pb2.ModelInferRequest(inputs=[Input(name="input", datatype="FP32", shape=[1])])
    request.inputs[0].parameters["shared_memory_region"].string_param = "in"
    with pytest.raises(InvalidInput, match="shared_memory_region needs shared_memory_byte_size"):
        converters.infer_request(request, "rid", None)


def test_every_output_is_answered_in_order() -> None:
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = api.InferResult("m", 2, "rid", [
        api.OutputTensor("logits", "FP32", [2, 3], logits),
        api.OutputTensor("top", "BYTES", [2, 1], [b"0.9:2:cat", b"0.8:1:dog"]),
        api.OutputTensor("shm", "FP32", [2, 3], logits, api.SharedMemoryRef("out", 24, 4))])
    response = converters.infer_response(result)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [2, 3]), ("top", "BYTES", [2, 1]), ("shm", "FP32", [2, 3])]
    assert response.raw_output_contents[0] == logits.astype("<f4").tobytes()
    assert tensors.decode_bytes_elements(response.raw_output_contents[1]) == [b"0.9:2:cat", b"0.8:1:dog"]
    assert response.raw_output_contents[2] == b""
    assert response.outputs[2].parameters["shared_memory_region"].string_param == "out"
    assert response.outputs[2].parameters["shared_memory_offset"].int64_param == 4
