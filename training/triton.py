"""Triton's ``config.pbtxt`` for one exported classifier, so the same model folder also loads in Triton.

Triton reads the config from ``NAME/config.pbtxt`` (one per model, shared by its versions); we write it into each
version folder too, so a version folder is self-describing. With ``max_batch_size > 0`` the batch dimension is
implicit: ``dims`` list the per-sample shape only ([C, H, W] in, [K] out).
"""

from __future__ import annotations

import re

MAX_BATCH_SIZE = 64

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def config_pbtxt(name: str, channels: int, height: int, width: int, classes: int,
                 max_batch_size: int = MAX_BATCH_SIZE, input_name: str = "input", output_name: str = "logits") -> str:
    """The text-format ModelConfig for an FP32 NCHW → logits ONNX model served by the onnxruntime backend."""
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must match {_NAME.pattern}")
    if min(channels, height, width, classes) < 1 or max_batch_size < 1:
        raise ValueError("dims and max_batch_size must be >= 1")
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n"
        "  {\n"
        f'    name: "{input_name}"\n'
        "    data_type: TYPE_FP32\n"
        "    format: FORMAT_NCHW\n"
        f"    dims: [ {channels}, {height}, {width} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output_name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {classes} ]\n"
        "  }\n"
        "]\n"
        "dynamic_batching { }\n"
    )
