"""Protobuf ↔ domain conversions, one small function each, so the servicers only wire calls together.

Everything a client sends is checked here or in the predictor; a problem is an ``InvalidInput`` that says which
field is wrong and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving._generated import model_config_pb2 as config_pb2
from serving.config import ServerConfig
from serving.contract import tensors, triton
from serving.contract.manifest import ModelManifest
from serving.contract.tensors import decode_bytes_elements, encode_bytes_elements
from serving.errors import InvalidInput, NotReady
from serving.runtime.dataplane import Explanation
from serving.runtime.prediction import Prediction
from serving.runtime.registry import ModelState, ServedModel

# The BYTES wire format's two functions live with the tensor rules; the gRPC tests and clients import them here.
__all__ = ["decode_bytes_elements", "encode_bytes_elements"]

# ---- imageclassifier.v1 ------------------------------------------------------------------------------------------


def tensor_to_array(tensor: ic_pb2.Tensor) -> np.ndarray:
    """A ``Tensor`` message → float32 array of its shape (``data`` little-endian bytes, or ``values``)."""
    shape = tensors.check_shape(tensor.shape, "tensor")
    if not shape or any(d < 1 for d in shape):
        raise InvalidInput(f"tensor shape must be positive dimensions, got {shape}")
    count = math.prod(shape)
    if tensor.data and tensor.values:
        raise InvalidInput("tensor has both data and values; send one")
    if tensor.data:
        if len(tensor.data) != 4 * count:
            raise InvalidInput(f"tensor data has {len(tensor.data)} bytes, shape {shape} float32 needs {4 * count}")
        return np.frombuffer(tensor.data, dtype="<f4").reshape(shape).astype(np.float32, copy=False)
    if len(tensor.values) != count:
        raise InvalidInput(f"tensor has {len(tensor.values)} values, shape {shape} needs {count}")
    return np.asarray(tensor.values, dtype=np.float32).reshape(shape)


def array_to_tensor(x: np.ndarray) -> ic_pb2.Tensor:
    x = np.ascontiguousarray(x, dtype="<f4")
    return ic_pb2.Tensor(shape=list(x.shape), data=x.tobytes())


def image_source(image: ic_pb2.Image, i: int = 0) -> bytes | np.ndarray:
    """One ``Image`` → its encoded bytes or a float32 (C, H, W) array; ``i`` names it in errors."""
    kind = image.WhichOneof("source")
    if kind == "encoded":
        return image.encoded
    if kind == "tensor":
        try:
            return tensor_to_array(image.tensor)
        except InvalidInput as e:
            raise InvalidInput(f"image {i}: {e}") from None
    raise InvalidInput(f"image {i} is empty: set encoded or tensor")


def images_from_request(request: ic_pb2.ClassifyRequest) -> list[bytes | np.ndarray]:
    """Each ``Image`` → encoded bytes or a float32 (C, H, W) array, in order."""
    if not request.images:
        raise InvalidInput("no images in the request")
    return [image_source(image, i) for i, image in enumerate(request.images)]


def classify_response(model: ServedModel, results: Sequence[Sequence[Prediction]],
                      request_id: str) -> ic_pb2.ClassifyResponse:
    return ic_pb2.ClassifyResponse(
        model=model.name, version=model.version, request_id=request_id,
        results=[ic_pb2.Classification(predictions=[
            ic_pb2.Prediction(label=p.label, index=p.index, probability=p.probability) for p in preds
        ]) for preds in results],
    )


def model_info(model: ServedModel) -> ic_pb2.ModelInfo:
    info = ic_pb2.ModelInfo(name=model.name, version=model.version, state=model.state.value, reason=model.reason,
                            available_versions=model.versions)
    m = model.manifest
    if m is None:
        return info
    c, h, w = m.input_shape
    spec = m.spec
    info.arch, info.variant, info.onnx_sha256, info.created = m.arch, m.variant, m.onnx_sha256, m.created
    info.labels.extend(m.labels)
    info.input.CopyFrom(ic_pb2.InputSpec(name=m.input_name, layout="NCHW", dtype="float32", channels=c, height=h,
                                         width=w))
    info.output.CopyFrom(ic_pb2.OutputSpec(name=m.output_name, dtype="float32", classes=m.num_classes))
    info.preprocess.CopyFrom(ic_pb2.Preprocess(size=list(spec.size), color_mode=spec.color_mode, mean=spec.mean,
                                               std=spec.std, scale=spec.scale, resize=spec.resize,
                                               resample=spec.resample))
    v = model.verification or m.verification
    info.verification.CopyFrom(ic_pb2.Verification(
        passed=bool(v.get("passed", False)), max_abs_diff=float(v.get("max_abs_diff") or 0.0),
        top1_agreement=float(v.get("top1_agreement") or 0.0), golden_atol=m.golden_atol,
        golden_max_abs_diff=model.golden.max_abs_diff if model.golden else 0.0,
        golden_samples=model.golden.samples if model.golden else 0,
    ))
    return info


def explain_response(model: ServedModel, e: Explanation, request_id: str) -> ic_pb2.ExplainResponse:
    h, w = e.heatmap.values.shape
    return ic_pb2.ExplainResponse(
        model=model.name, version=model.version, request_id=request_id, class_index=e.class_index, label=e.label,
        method=e.method,
        predictions=[ic_pb2.Prediction(label=p.label, index=p.index, probability=p.probability)
                     for p in e.predictions],
        heatmap=ic_pb2.Heatmap(height=h, width=w, values=e.heatmap.values.ravel().tolist(),
                               raw_max=e.heatmap.raw_max),
        stages=[ic_pb2.FeatureMaps(name=s.name, channels=s.maps.shape[0], height=s.maps.shape[1],
                                   width=s.maps.shape[2], total_channels=s.total_channels, values=s.maps.tobytes())
                for s in e.stages],
    )


def stream_error(request_id: str, code: int, message: str) -> ic_pb2.ClassifyStreamResponse:
    return ic_pb2.ClassifyStreamResponse(request_id=request_id, error=ic_pb2.Status(code=code, message=message))


# ---- inference (Open Inference Protocol) ------------------------------------------------------------------------


def infer_inputs(request: kserve_pb2.ModelInferRequest, manifest: ModelManifest) -> np.ndarray | list[bytes]:
    """The one input of a ModelInfer request: an FP32 (N, C, H, W) array, or the encoded images of a BYTES tensor."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"model {manifest.name!r} takes exactly one input {manifest.input_name!r} "
                           f"({tensors.expected_input(manifest)}), got {len(request.inputs)}")
    tensor = request.inputs[0]
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for {len(request.inputs)} inputs")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    values = tensor.contents.bytes_contents if tensor.datatype == "BYTES" else tensor.contents.fp32_contents
    return tensors.infer_input(manifest, tensor.name, tensor.datatype, tensor.shape, raw=raw, values=values)


def infer_batch_size(request: kserve_pb2.ModelInferRequest) -> int:
    """The images a ModelInfer request asks for (its first input's first dimension), read before admitting it."""
    return tensors.batch_size(request.inputs[0].shape) if len(request.inputs) == 1 else 1


def check_requested_outputs(request: kserve_pb2.ModelInferRequest, manifest: ModelManifest) -> None:
    for output in request.outputs:
        if output.name != manifest.output_name:
            raise InvalidInput(f"unknown output {output.name!r}; model {manifest.name!r} has {manifest.output_name!r}")


def infer_response(model: ServedModel, request_id: str, logits: np.ndarray) -> kserve_pb2.ModelInferResponse:
    manifest = _manifest(model)
    logits = np.ascontiguousarray(logits, dtype="<f4")
    return kserve_pb2.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id,
        outputs=[kserve_pb2.ModelInferResponse.InferOutputTensor(name=manifest.output_name, datatype="FP32",
                                                                 shape=list(logits.shape))],
        raw_output_contents=[logits.tobytes()],
    )


def model_metadata(model: ServedModel) -> kserve_pb2.ModelMetadataResponse:
    m = _manifest(model)
    tensor = kserve_pb2.ModelMetadataResponse.TensorMetadata
    return kserve_pb2.ModelMetadataResponse(
        name=model.name, versions=[str(model.version)], platform=triton.PLATFORM,
        inputs=[tensor(name=m.input_name, datatype="FP32", shape=[-1, *m.input_shape])],
        outputs=[tensor(name=m.output_name, datatype="FP32", shape=[-1, m.num_classes])],
    )


def model_config(model: ServedModel, config: ServerConfig) -> kserve_pb2.ModelConfigResponse:
    """The exported ``config.pbtxt`` message, plus what only the running server knows."""
    message = triton.model_config(_manifest(model), max_batch_size=config.max_batch)
    gpu = model.predictor is not None and model.predictor.device == "cuda"
    kind = config_pb2.ModelInstanceGroup.KIND_GPU if gpu else config_pb2.ModelInstanceGroup.KIND_CPU
    message.name = model.name
    message.version_policy.specific.versions.append(model.version)
    message.dynamic_batching.max_queue_delay_microseconds = int(config.max_queue_delay_ms * 1000)
    count = model.predictor.instances if model.predictor is not None else 1
    message.instance_group.append(config_pb2.ModelInstanceGroup(name=model.name, kind=kind, count=count))
    return kserve_pb2.ModelConfigResponse(config=message)


def model_ready(model: ServedModel) -> bool:
    return model.state is ModelState.SERVING


def _manifest(model: ServedModel) -> ModelManifest:
    if model.manifest is None:
        raise NotReady(f"model {model.name!r} is not serving: {model.reason or 'still loading'}")
    return model.manifest
