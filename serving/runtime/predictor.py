"""One model ready to answer: an onnxruntime session, the preprocessing from its spec, and top-k classification.

The gRPC server, the batch CLI and the tests all go through :class:`Predictor`, so they cannot disagree on how an
image becomes a tensor or how logits become probabilities. It is synchronous and thread-safe (onnxruntime's
``InferenceSession.run`` may be called from several threads); the server calls it from worker threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.contract.manifest import ModelManifest
from serving.contract.prediction import Prediction, top_predictions
from serving.contract.preprocess import DEFAULT_MAX_PIXELS, preprocess
from serving.errors import InvalidInput, ModelRejected

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
DEFAULT_TOP_K = 5
ImageSource = str | Path | bytes | np.ndarray
__all__ = ["DEVICES", "ImageSource", "Predictor", "available_cores"]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_providers(device: str) -> list[str]:
    """Execution providers for ``device``; CUDA falls back to CPU with a warning when onnxruntime lacks it."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("--device cuda: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); using CPU")
    return ["CPUExecutionProvider"]


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    # Idle intra-op threads would otherwise spin for a while after each run, taking the core that the event loop
    # and the image decoders need between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def instance_threads(threads: int | None, instances: int) -> int:
    """Intra-op threads of each of ``instances`` sessions: the thread budget (default: the cores) split evenly, at
    least one each."""
    return max(1, (threads or available_cores()) // instances)


class Predictor:
    """A verified model version: ``run`` (tensor → logits), ``preprocess`` (image → tensor) and ``classify``.

    ``instances`` onnxruntime sessions of the same graph share the thread budget (``instance_threads``); ``run``
    takes the instance to use, and each instance is meant to be called from one thread at a time (the server gives
    each its own)."""

    def __init__(self, onnx_model: bytes | str | Path, manifest: ModelManifest, *, device: str = "cpu",
                 threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, instances: int = 1) -> None:
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self.manifest = manifest
        self.max_pixels = max_pixels
        model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        options, providers = session_options(instance_threads(threads, instances)), session_providers(device)
        self.sessions = [ort.InferenceSession(model, options, providers=providers) for _ in range(instances)]
        self.session = self.sessions[0]
        self.providers: list[str] = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            log.warning("--device cuda: the CUDA provider failed to initialise for %s; using CPU", manifest.name)
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        self._check_signature()

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        m = self.manifest
        if [i.name for i in inputs] != [m.input_name] or m.output_name not in [o.name for o in outputs]:
            raise ModelRejected(
                f"model.onnx has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}; "
                f"model.json says {m.input_name!r} -> {m.output_name!r}"
            )
        shape = inputs[0].shape
        if inputs[0].type != "tensor(float)" or len(shape) != 4 or list(shape[1:]) != list(m.input_shape):
            raise ModelRejected(f"model.onnx input is {inputs[0].type} {shape}, model.json says float32 "
                                f"[N, {', '.join(map(str, m.input_shape))}]")

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.manifest.input_shape

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def resolve_top_k(self, k: int) -> int:
        """0 → the default (5, or fewer classes); otherwise ``InvalidInput`` unless 1 ≤ k ≤ classes."""
        if k == 0:
            return min(DEFAULT_TOP_K, self.num_classes)
        if not 1 <= k <= self.num_classes:
            raise InvalidInput(f"top_k must be between 1 and {self.num_classes} (the number of classes), got {k}")
        return k

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Encoded bytes or a file path → float32 (C, H, W); an ndarray is checked and passed through."""
        if isinstance(image, np.ndarray):
            return self.check_tensor(image)
        return preprocess(image, self.manifest.spec, self.max_pixels)

    def check_tensor(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed image, (C, H, W) float32, or ``InvalidInput`` saying what was expected."""
        if x.dtype != np.float32:
            raise InvalidInput(f"tensor must be float32, got {x.dtype}")
        if tuple(x.shape) != self.input_shape:
            raise InvalidInput(f"tensor shape must be {list(self.input_shape)} (C, H, W), got {list(x.shape)}")
        return x

    def check_batch(self, x: np.ndarray) -> np.ndarray:
        """A batch, (N, C, H, W) float32 with N ≥ 1, or ``InvalidInput``."""
        if x.dtype != np.float32:
            raise InvalidInput(f"input must be float32, got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise InvalidInput(
                f"input shape must be [N, {', '.join(map(str, self.input_shape))}] with N >= 1, got {list(x.shape)}"
            )
        return x

    @staticmethod
    def check_finite(x: np.ndarray) -> np.ndarray:
        """``InvalidInput`` if ``x`` holds NaN or ±Inf: the logits would be meaningless, so such input is refused."""
        finite = np.isfinite(x)
        if not finite.all():
            raise InvalidInput(f"tensor has {x.size - int(np.count_nonzero(finite))} NaN or infinite values; "
                               "only finite float32 values are accepted")
        return x

    @property
    def instances(self) -> int:
        return len(self.sessions)

    def run(self, batch: np.ndarray, max_batch: int | None = None, instance: int = 0) -> np.ndarray:
        """(N, C, H, W) float32 → logits (N, K) float32 from session ``instance``: one onnxruntime call, or calls of
        at most ``max_batch`` images. The server passes its ``max_batch``: onnxruntime's memory arena keeps the
        buffers of the largest batch it ever ran, so one request of 1,337 images would otherwise hold ~290 MB (digits
        model) for good."""
        x = np.ascontiguousarray(self.check_batch(batch))
        session = self.sessions[instance]
        if max_batch is None or len(x) <= max_batch:
            return self._run(session, x)
        return np.concatenate([self._run(session, x[i:i + max_batch]) for i in range(0, len(x), max_batch)])

    def _run(self, session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        (logits,) = session.run([self.manifest.output_name], {self.manifest.input_name: x})
        return logits

    def classify(self, images: Sequence[ImageSource], top_k: int = 0, batch_size: int = 32) -> list[list[Prediction]]:
        """In-process classification (batch CLI, tests): top-k per image, in order."""
        k = self.resolve_top_k(top_k)
        results: list[list[Prediction]] = []
        for start in range(0, len(images), batch_size):
            x = np.stack([self.preprocess(img) for img in images[start:start + batch_size]])
            results += top_predictions(self.run(x), k, self.labels)
        return results
