"""Static INT8 quantization of an exported FP32 model with onnxruntime.

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized operator, which onnxruntime fuses into
integer kernels at load time), unsigned 8-bit activations and signed 8-bit per-channel weights — the combination
onnxruntime recommends for x86 CPUs. Activation ranges are calibrated (min/max) on a few hundred *training* images
preprocessed exactly as the server will, after onnxruntime's ``quant_pre_process`` (shape inference and graph
clean-up, which lets more operators be quantized).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from serving.contract.preprocess import PreprocessSpec
from training.verify import Dataset

CALIBRATION_SAMPLES = 200
CALIBRATION_BATCH = 16


class _Reader(CalibrationDataReader):
    """Feeds preprocessed calibration batches to onnxruntime's calibrator."""

    def __init__(self, dataset: Dataset, spec: PreprocessSpec, input_name: str) -> None:
        self._batches: Iterator[tuple[np.ndarray, np.ndarray]] = dataset.batches(spec, CALIBRATION_BATCH)
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch[0]}


def quantize_int8(fp32: Path, out: Path, calibration: Dataset, spec: PreprocessSpec, input_name: str = "input",
                  samples: int = CALIBRATION_SAMPLES, seed: int = 0) -> int:
    """Write the INT8 QDQ model of ``fp32`` to ``out``; returns the number of calibration images used."""
    subset = calibration.subset(samples, seed)
    if len(subset) == 0:
        raise ValueError("no calibration images (the training split is empty)")
    with tempfile.TemporaryDirectory(prefix="quant-", dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            prepared, out, _Reader(subset, spec, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return len(subset)
