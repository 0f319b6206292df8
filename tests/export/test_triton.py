"""config.pbtxt text: what Triton's onnxruntime backend needs, and refusal of values it would reject."""

from __future__ import annotations

import re

import pytest

from training.triton import config_pbtxt


def test_config_fields() -> None:
    text = config_pbtxt("digits", 1, 28, 28, 10, max_batch_size=16)
    assert re.search(r'^name: "digits"$', text, re.M)
    assert re.search(r'^platform: "onnxruntime_onnx"$', text, re.M)
    assert re.search(r"^max_batch_size: 16$", text, re.M)
    inputs, outputs = text.split("output [")
    assert 'name: "input"' in inputs
    assert "dims: [ 1, 28, 28 ]" in inputs
    assert "TYPE_FP32" in inputs
    assert 'name: "logits"' in outputs
    assert "dims: [ 10 ]" in outputs
    assert "TYPE_FP32" in outputs
    assert text.count("{") == text.count("}")
    assert text.count("[") == text.count("]")


@pytest.mark.parametrize(("args", "message"), [
    (('bad"name', 1, 8, 8, 2), "model name"),
    (("m", 0, 8, 8, 2), ">= 1"),
    (("m", 1, 8, 8, 0), ">= 1"),
])
def test_refuses_invalid_values(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_pbtxt(*args)
