"""Explanations: which parts of an image made the model answer, and what each stage of the network sees.

Two methods, both giving a coarse map over the image for one class k:

- **cam** — the class activation map (Zhou et al. 2016): for a head that is global-average-pool + one linear layer,
  ``CAM_k = sum_c W[k, c] * F_c`` over the last feature map F, whose mean (plus the bias) *is* logit k: an exact
  decomposition of the answer by position. It comes from the model's explain graph (``explain.onnx``, written by
  the exporter and verified against PyTorch), which also returns each stage's feature map.
- **occlusion** (Zeiler & Fergus 2014) — blank one patch of a grid at a time (set it to 0 in the normalised input,
  the data set's mean colour) and measure how much the probability of k drops; works for any model, through the
  served model and its batcher (one image per patch, batched).

Both maps are clipped at 0 (only evidence *for* k) and scaled to [0, 1]; ``raw_max`` keeps the scale.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.contract.api import Heatmap, StageMaps
from serving.contract.manifest import CAM_OUTPUT, INPUT_NAME, OUTPUT_NAME, STAGE_PREFIX, ExplainGraph
from serving.errors import ModelRejected
from serving.runtime.predictor import session_options, session_providers

METHODS = ("cam", "occlusion")
OCCLUSION_GRID = 7      # patches per side (equal parts of the image): 49 forward passes, a 7×7 map
STAGE_CHANNELS = 8      # feature maps shown per stage: the most active ones


@dataclass
class ExplainSession:
    """``explain.onnx`` of one model version, loaded on first use with its sha256 checked; thread-safe."""

    version_dir: Path
    graph: ExplainGraph
    device: str = "cpu"
    threads: int | None = None
    _session: ort.InferenceSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _load(self) -> ort.InferenceSession:
        with self._lock:
            if self._session is None:
                try:
                    data = (self.version_dir / self.graph.file).read_bytes()
                except OSError as e:
                    raise ModelRejected(f"cannot read {self.graph.file}: {e.strerror or e}") from None
                if hashlib.sha256(data).hexdigest() != self.graph.sha256:
                    raise ModelRejected(f"{self.graph.file}: sha256 differs from model.json's: file changed")
                try:
                    self._session = ort.InferenceSession(data, session_options(self.threads),
                                                         providers=session_providers(self.device))
                except Exception as e:  # onnxruntime refusing the graph
                    raise ModelRejected(f"onnxruntime cannot load {self.graph.file}: {e}") from None
            return self._session

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for an (N, C, H, W) batch: ``logits``, the stage maps and (if the head allows) ``cam``."""
        names = [OUTPUT_NAME, *self.graph.stages, *([CAM_OUTPUT] if self.graph.cam else [])]
        return dict(zip(names, self._load().run(names, {INPUT_NAME: x}), strict=True))


def scaled(raw: np.ndarray) -> Heatmap:
    """Clip at 0 (evidence for the class only) and scale to [0, 1]."""
    positive = np.maximum(raw.astype(np.float32), 0.0)
    top = float(positive.max()) if positive.size else 0.0
    return Heatmap(positive / top if top > 0 else positive, top)


def cam(outputs: dict[str, np.ndarray], k: int) -> Heatmap:
    return scaled(outputs[CAM_OUTPUT][0, k])


def occlusion_batch(x: np.ndarray, grid: int = OCCLUSION_GRID) -> np.ndarray:
    """``grid``² copies of the (C, H, W) input, copy i·grid + j with patch (i, j) set to 0 (the mean colour)."""
    _, h, w = x.shape
    rows, cols = np.linspace(0, h, grid + 1).round().astype(int), np.linspace(0, w, grid + 1).round().astype(int)
    batch = np.repeat(x[None], grid * grid, axis=0)
    for i in range(grid):
        for j in range(grid):
            batch[i * grid + j, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = 0.0
    return batch


def occlusion(probability: float, occluded: np.ndarray, grid: int = OCCLUSION_GRID) -> Heatmap:
    """How much each patch's blanking lowered the class's probability (``occluded``: its probability per copy)."""
    return scaled((probability - occluded).reshape(grid, grid))


def stage_maps(outputs: dict[str, np.ndarray], stages: tuple[str, ...],
               channels: int = STAGE_CHANNELS) -> list[StageMaps]:
    """For each stage, its ``channels`` most active maps (largest mean), each scaled to 0–255 on its own."""
    found = []
    for name in stages:
        maps = outputs[name][0]
        order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:channels]
        chosen = maps[order].astype(np.float32)
        low = chosen.min(axis=(1, 2), keepdims=True)
        span = chosen.max(axis=(1, 2), keepdims=True) - low
        scaled_maps = np.where(span > 0, (chosen - low) / np.where(span > 0, span, 1), 0.0)
        found.append(StageMaps(name.removeprefix(STAGE_PREFIX), np.round(scaled_maps * 255).astype(np.uint8),
                               int(maps.shape[0])))
    return found
