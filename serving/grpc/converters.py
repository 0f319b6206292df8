"""Protobuf ↔ the data plane's neutral types, one small function each, so the servicers only wire calls together.

Only what is particular to the protobuf messages is checked here (a ``Tensor``'s two encodings, an empty ``Image``,
the count of ``raw_input_contents``); every other rule is the data plane's, the same for both transports. A problem
is an ``InvalidInput`` that says which field is wrong and what was expected. The classifier API's answers are
built by ``serving.contract.classifier``, which the HTTP front end shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving._generated import grpc_service_pb2 as kserve_pb2
from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract import api, tensors
from serving.errors import InvalidInput
from serving.runtime.shared_memory import RegionStatus

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
    return [image_source(image, i) for i, image in enumerate(request.images)]


def classify_request(request: ic_pb2.ClassifyRequest, request_id: str, deadline: float | None) -> api.ClassifyRequest:
    return api.ClassifyRequest(model=request.model, version=request.version, images=images_from_request(request),
                               top_k=request.top_k, id=request_id, deadline=deadline)


def explain_request(request: ic_pb2.ExplainRequest, request_id: str, deadline: float | None) -> api.ExplainRequest:
    return api.ExplainRequest(
        model=request.model, version=request.version, image=image_source(request.image),
        class_index=request.class_index if request.HasField("class_index") else None, method=request.method,
        top_k=request.top_k, stages=request.stages, id=request_id, deadline=deadline)


def stream_error(request_id: str, code: int, message: str) -> ic_pb2.ClassifyStreamResponse:
    return ic_pb2.ClassifyStreamResponse(request_id=request_id, error=ic_pb2.Status(code=code, message=message))


# ---- inference (Open Inference Protocol) ------------------------------------------------------------------------


def _parameter(parameters, key: str, what: str, kind: type) -> Any:  # type: ignore[no-untyped-def]
    """One request parameter's value (None when absent), refused when it is not of the ``kind`` Triton sends."""
    if key not in parameters:
        return None
    value = getattr(parameters[key], parameters[key].WhichOneof("parameter_choice") or "string_param")
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise InvalidInput(f"{what}: parameter {key!r} must be {'an integer' if kind is int else 'a string'}")


def _shared_memory(parameters, what: str) -> api.SharedMemoryRef | None:  # type: ignore[no-untyped-def]
    """The ``shared_memory_*`` parameters of an input or a requested output, as Triton's clients set them."""
    region = _parameter(parameters, "shared_memory_region", what, str)
    if region is None:
        return None
    size = _parameter(parameters, "shared_memory_byte_size", what, int)
    if size is None:
        raise InvalidInput(f"{what}: shared_memory_region needs shared_memory_byte_size")
    return api.SharedMemoryRef(region, size, _parameter(parameters, "shared_memory_offset", what, int) or 0)


def infer_request(request: kserve_pb2.ModelInferRequest, request_id: str,
                  deadline: float | None) -> api.InferRequest:
    """A ModelInfer request as the data plane takes it: each input with its raw bytes, its typed contents or its
    place in shared memory; each requested output with its class count and place in shared memory."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        shm = _shared_memory(t.parameters, f"input {t.name!r}")
        values = None if raw or shm else (t.contents.bytes_contents if t.datatype == "BYTES"
                                          else t.contents.fp32_contents)
        inputs.append(api.InputTensor(t.name, t.datatype, t.shape, raw=raw[i] if raw else None, values=values,
                                      shm=shm))
    outputs = [api.RequestedOutput(o.name, _parameter(o.parameters, "classification", f"output {o.name!r}", int) or 0,
                                   _shared_memory(o.parameters, f"output {o.name!r}"))
               for o in request.outputs]
    return api.InferRequest(model=request.model_name, version=request.model_version, inputs=inputs,
                            outputs=outputs, id=request_id, deadline=deadline)


def infer_response(result: api.InferResult) -> kserve_pb2.ModelInferResponse:
    """Every output's raw bytes in ``raw_output_contents``, in order; one in shared memory has an empty entry and
    says where it went in its parameters, as Triton answers."""
    response = kserve_pb2.ModelInferResponse(model_name=result.model, model_version=str(result.version),
                                             id=result.id)
    for tensor in result.outputs:
        output = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.shm is not None:
            output.parameters["shared_memory_region"].string_param = tensor.shm.region
            output.parameters["shared_memory_byte_size"].int64_param = tensor.shm.byte_size
            if tensor.shm.offset:
                output.parameters["shared_memory_offset"].int64_param = tensor.shm.offset
            response.raw_output_contents.append(b"")
        else:
            response.raw_output_contents.append(tensors.output_bytes(tensor.datatype, tensor.data))
    return response


def model_metadata(m: api.ModelMetadata) -> kserve_pb2.ModelMetadataResponse:
    tensor = kserve_pb2.ModelMetadataResponse.TensorMetadata
    return kserve_pb2.ModelMetadataResponse(
        name=m.name, versions=m.versions, platform=m.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in m.outputs],
    )


def server_metadata(m: api.ServerMetadata) -> kserve_pb2.ServerMetadataResponse:
    return kserve_pb2.ServerMetadataResponse(name=m.name, version=m.version, extensions=m.extensions)


# ---- the repository extension -----------------------------------------------------------------------------------


def repository_parameters(parameters: Mapping[str, kserve_pb2.ModelRepositoryParameter]) -> dict[str, Any]:
    """Each ``ModelRepositoryParameter`` → its value (bool, int, str or bytes; None when none is set)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind else None
    return values


def repository_request(request: kserve_pb2.RepositoryModelLoadRequest
                       | kserve_pb2.RepositoryModelUnloadRequest) -> api.RepositoryRequest:
    return api.RepositoryRequest(model=request.model_name, parameters=repository_parameters(request.parameters),
                                 repository=request.repository_name)


def repository_index(models: list[api.RepositoryModel]) -> kserve_pb2.RepositoryIndexResponse:
    entry = kserve_pb2.RepositoryIndexResponse.ModelIndex
    return kserve_pb2.RepositoryIndexResponse(
        models=[entry(name=m.name, version=m.version, state=m.state, reason=m.reason) for m in models])


# ---- statistics extension -------------------------------------------------------------------------------------


def statistic_duration(d: api.StatisticDuration) -> kserve_pb2.StatisticDuration:
    return kserve_pb2.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(stats: list[api.ModelStatistics]) -> kserve_pb2.ModelStatisticsResponse:
    """Triton's answer, field for field; the response cache's durations are there and zero (no cache here)."""
    d = statistic_duration
    return kserve_pb2.ModelStatisticsResponse(model_stats=[kserve_pb2.ModelStatistics(
        name=s.name, version=str(s.version), last_inference=s.last_inference, inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=kserve_pb2.InferStatistics(
            success=d(s.success), fail=d(s.fail), queue=d(s.queue), compute_input=d(s.compute_input),
            compute_infer=d(s.compute_infer), compute_output=d(s.compute_output),
            cache_hit=kserve_pb2.StatisticDuration(), cache_miss=kserve_pb2.StatisticDuration()),
        batch_stats=[kserve_pb2.InferBatchStatistics(batch_size=b.batch_size, compute_input=d(b.compute_input),
                                                     compute_infer=d(b.compute_infer),
                                                     compute_output=d(b.compute_output))
                     for b in s.batch_stats],
    ) for s in stats])


# ---- Triton's logging and trace extensions -----------------------------------------------------------------------

def log_settings_changes(request: kserve_pb2.LogSettingsRequest) -> dict[str, bool | int | str | None]:
    """Each setting's new value in the type its field carries (bool, uint32, string); None for a value with no
    field set (back to the start value)."""
    return {name: None if (field := value.WhichOneof("parameter_choice")) is None else getattr(value, field)
            for name, value in request.settings.items()}


def log_settings_response(settings: Mapping[str, bool | int | str]) -> kserve_pb2.LogSettingsResponse:
    value = kserve_pb2.LogSettingsResponse.SettingValue
    return kserve_pb2.LogSettingsResponse(settings={
        name: value(bool_param=v) if isinstance(v, bool) else value(uint32_param=v) if isinstance(v, int)
        else value(string_param=v) for name, v in settings.items()})


def trace_settings_changes(request: kserve_pb2.TraceSettingRequest) -> dict[str, list[str] | None]:
    """Each setting's new values; None for one with none (cleared: back to the global or start value)."""
    return {name: list(value.value) or None for name, value in request.settings.items()}


def trace_settings_response(settings: Mapping[str, list[str]]) -> kserve_pb2.TraceSettingResponse:
    value = kserve_pb2.TraceSettingResponse.SettingValue
    return kserve_pb2.TraceSettingResponse(settings={name: value(value=v) for name, v in settings.items()})


# ---- shared memory (Triton's extensions) ------------------------------------------------------------------------


def shm_status(regions: list[RegionStatus]) -> kserve_pb2.SystemSharedMemoryStatusResponse:
    status = kserve_pb2.SystemSharedMemoryStatusResponse.RegionStatus
    return kserve_pb2.SystemSharedMemoryStatusResponse(regions={
        r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions})
