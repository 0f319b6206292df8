"""The classifier API's answers (``imageclassifier.v1`` messages) from the data plane's neutral results.

One mapping for both transports: gRPC sends these messages as they are, HTTP's ``/v1`` routes send their proto3 JSON
mapping (:func:`to_json`: field names as in the .proto, int64 values as strings, and every field present whatever
its value, so class 0 comes with ``"index": 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from serving._generated import imageclassifier_pb2 as ic_pb2
from serving.contract.api import ClassifyResult, ExplainResult, ModelStatus
from serving.contract.manifest import STAGE_PREFIX
from serving.contract.prediction import Prediction


def to_json(message: Message, every_field: bool = True) -> dict[str, Any]:
    """The proto3 JSON mapping; with ``every_field``, zeros, empty strings and empty lists too (proto3 drops them,
    which would leave a client reading ``index`` of class 0 without one). Triton's model configuration goes without
    them, as ``tritonclient`` reads it over gRPC."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=every_field)


def predictions(preds: Sequence[Prediction]) -> list[ic_pb2.Prediction]:
    return [ic_pb2.Prediction(label=p.label, index=p.index, probability=p.probability) for p in preds]


def classify_response(result: ClassifyResult) -> ic_pb2.ClassifyResponse:
    return ic_pb2.ClassifyResponse(
        model=result.model, version=result.version, request_id=result.id,
        results=[ic_pb2.Classification(predictions=predictions(preds)) for preds in result.results],
    )


def model_info(status: ModelStatus) -> ic_pb2.ModelInfo:
    info = ic_pb2.ModelInfo(name=status.name, version=status.version, state=status.state, reason=status.reason,
                            available_versions=status.versions)
    m = status.manifest
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
    graph = m.explain
    info.explain_methods.extend(["cam", "occlusion"] if graph is not None and graph.cam else ["occlusion"])
    info.stages.extend(s.removeprefix(STAGE_PREFIX) for s in (graph.stages if graph is not None else ()))
    v = status.verification or m.verification
    info.verification.CopyFrom(ic_pb2.Verification(
        passed=bool(v.get("passed", False)), max_abs_diff=float(v.get("max_abs_diff") or 0.0),
        top1_agreement=float(v.get("top1_agreement") or 0.0), golden_atol=m.golden_atol,
        golden_max_abs_diff=status.golden_max_abs_diff, golden_samples=status.golden_samples,
    ))
    return info


def list_models(statuses: Sequence[ModelStatus]) -> ic_pb2.ListModelsResponse:
    return ic_pb2.ListModelsResponse(models=[model_info(s) for s in statuses])


def explain_response(e: ExplainResult) -> ic_pb2.ExplainResponse:
    h, w = e.heatmap.values.shape
    return ic_pb2.ExplainResponse(
        model=e.model, version=e.version, request_id=e.id, class_index=e.class_index, label=e.label,
        method=e.method, predictions=predictions(e.predictions),
        heatmap=ic_pb2.Heatmap(height=h, width=w, values=e.heatmap.values.ravel().tolist(),
                               raw_max=e.heatmap.raw_max),
        stages=[ic_pb2.FeatureMaps(name=s.name, channels=s.maps.shape[0], height=s.maps.shape[1],
                                   width=s.maps.shape[2], total_channels=s.total_channels, values=s.maps.tobytes())
                for s in e.stages],
    )
