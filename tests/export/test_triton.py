"""config.pbtxt: the ModelConfig message Triton's onnxruntime backend needs, as text, and what the RPC adds to it."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from serving._generated import model_config_pb2 as config_pb2
from serving.contract import triton
from serving.contract.manifest import ModelManifest
from serving.contract.preprocess import PreprocessSpec


def _manifest(name: str = "digits", classes: int = 10) -> ModelManifest:
    spec = PreprocessSpec(size=(28, 28), color_mode="L", mean=(0.5,), std=(0.25,),
                          labels=tuple(str(i) for i in range(classes)))
    return ModelManifest(name=name, version=1, labels=spec.labels, spec=spec, onnx_sha256="0" * 64,
                         golden_atol=1e-4, input_shape=spec.input_shape, num_classes=classes)


def test_config_fields() -> None:
    text = triton.config_pbtxt(_manifest(), max_batch_size=16)
    config = text_format.Parse(text, config_pb2.ModelConfig())
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "digits", "onnxruntime_onnx", "onnxruntime", 16)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type, inp.format) == (
        "input", [1, 28, 28], config_pb2.TYPE_FP32, config_pb2.ModelInput.FORMAT_NCHW)
    assert (out.name, list(out.dims), out.data_type) == ("logits", [10], config_pb2.TYPE_FP32)
    assert config.HasField("dynamic_batching")
    assert 'platform: "onnxruntime_onnx"' in text.splitlines()


def test_refuses_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        triton.model_config(_manifest(), max_batch_size=0)

