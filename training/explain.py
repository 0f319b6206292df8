"""The explain graph: the folded network with its feature maps (and class activation maps) as outputs.

An explanation needs what the served graph throws away: each stage's feature map (what the network sees, layer by
layer) and, for a head that is global-average-pool + one linear layer, the class activation map (CAM, Zhou et al.
2016, "Learning Deep Features for Discriminative Localization"): the classifier's row for class k applied at every
position of the last feature map, ``CAM_k(y, x) = sum_c W[k, c] * F[c, y, x]``, whose mean over positions plus the
bias is exactly logit k. It is exported as a second file, ``explain.onnx``, from the same folded copy as
``model.onnx``, and verified against PyTorch like it; the served graph, its answers and its speed do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from models.resnet import ResNet
from serving.contract.manifest import CAM_OUTPUT, INPUT_NAME, OUTPUT_NAME, STAGE_PREFIX, ExplainGraph


class Explainer(nn.Module):
    """``model``'s stem, stages and head, returning (logits, stage maps…, [cam])."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.model = model
        self.cam = has_cam(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        maps = []
        for name in m.stages:
            x = getattr(m, name)(x)
            maps.append(x)
        outputs = [m.forward_head(x), *maps]
        if self.cam:
            outputs.append(torch.einsum("kc,nchw->nkhw", m.fc.weight, x))
        return tuple(outputs)


def supports(model: nn.Module) -> bool:
    """The project's ResNet (stem + named stages); other architectures are explained by occlusion only."""
    return isinstance(model, ResNet) and bool(getattr(model, "stages", None))


def has_cam(model: nn.Module) -> bool:
    """Whether the head is global-average-pool + one linear layer, for which CAM is exact."""
    pool = getattr(model, "avgpool", None)
    return (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
            and isinstance(getattr(model, "fc", None), nn.Linear))


def output_names(model: ResNet) -> list[str]:
    return [OUTPUT_NAME, *(STAGE_PREFIX + s for s in model.stages), *([CAM_OUTPUT] if has_cam(model) else [])]


def export_explain(folded: ResNet, reference: ResNet, example: torch.Tensor, samples: np.ndarray, path: Path,
                   atol: float, export: Callable[..., None]) -> tuple[ExplainGraph, dict[str, Any]]:
    """Export ``folded`` as the explain graph at ``path`` and compare every output with ``reference`` (the unfolded
    PyTorch model) on ``samples``: logits and CAM within ``atol``, feature maps within ``atol`` times their
    scale. Returns the manifest entry (without sha256 filled by the caller) and the verification record."""
    names = output_names(folded)
    export(Explainer(folded).eval(), example, path, names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(names, {INPUT_NAME: samples.astype(np.float32)})
    with torch.no_grad():
        want = [t.numpy() for t in Explainer(reference).eval()(torch.from_numpy(samples))]
    diffs: dict[str, float] = {}
    failed = []
    for name, a, b in zip(names, got, want, strict=True):
        diff = float(np.abs(a - b).max())
        diffs[name] = diff
        limit = atol if not name.startswith(STAGE_PREFIX) else atol * max(1.0, float(np.abs(b).max()))
        if not diff <= limit:
            failed.append(f"{name}: max |Δ| {diff:.3g} > {limit:.3g}")
    record = {"samples": len(samples), "outputs": names, "max_abs_diff": diffs, "atol": atol, "passed": not failed,
              "failures": failed}
    stages = tuple(n for n in names if n.startswith(STAGE_PREFIX))
    return ExplainGraph(sha256="", stages=stages, cam=CAM_OUTPUT in names), record
