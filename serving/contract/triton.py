"""Triton's model configuration for one exported classifier: one ``ModelConfig`` message for the file and the RPC.

The exporter writes ``config.pbtxt`` (text format of :func:`model_config`) so that the same model folder also loads
in Triton; the server's ModelConfig RPC answers with the same message plus what only a running server knows (the
served version, the batcher's delay, the device). With ``max_batch_size > 0`` the batch dimension is implicit:
``dims`` list the per-sample shape only ([C, H, W] in, [K] out).
"""

from __future__ import annotations

from google.protobuf import text_format

from serving._generated import model_config_pb2 as config_pb2
from serving.contract.manifest import ModelManifest

PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"
MODEL_FILE = "model.onnx"
MAX_BATCH_SIZE = 64


def model_config(manifest: ModelManifest, max_batch_size: int = MAX_BATCH_SIZE) -> config_pb2.ModelConfig:
    """FP32 NCHW → logits, served by the onnxruntime backend with dynamic batching."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    return config_pb2.ModelConfig(
        name=manifest.name, platform=PLATFORM, backend=BACKEND, max_batch_size=max_batch_size,
        input=[config_pb2.ModelInput(name=manifest.input_name, data_type=config_pb2.TYPE_FP32,
                                     format=config_pb2.ModelInput.FORMAT_NCHW, dims=list(manifest.input_shape))],
        output=[config_pb2.ModelOutput(name=manifest.output_name, data_type=config_pb2.TYPE_FP32,
                                       dims=[manifest.num_classes])],
        dynamic_batching=config_pb2.ModelDynamicBatching(),
        default_model_filename=MODEL_FILE,
    )


def config_pbtxt(manifest: ModelManifest, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """``config.pbtxt``: :func:`model_config` in protobuf text format."""
    return text_format.MessageToString(model_config(manifest, max_batch_size))
