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

from models.archs import body_children
from models.resnet import ResNet
from serving.contract.manifest import CAM_OUTPUT, INPUT_NAME, OUTPUT_NAME, STAGE_PREFIX, ExplainGraph


class Explainer(nn.Module):
    """The network's body child by child, returning (logits, stage maps…, [cam]).

    Two layouts: the project's ResNet with its own linear head (stem, ``layer1…``, ``forward_head``: CAM is exact),
    and fastai's ``nn.Sequential(body, head)`` around it (``--head fastai``: the body's children are the ResNet's,
    cut before the pooling; the head is fastai's, so there is no CAM, but the stages are there to show)."""

    def __init__(self, model: nn.Module, arch: str = "") -> None:
        super().__init__()
        self.model = model
        self.cam = has_cam(model)
        stages = set(stage_names(model, arch))
        # For a fastai body: whether each child's output is a stage map (else it is part of the stem).
        self.shown = [name in stages for name in _body_names(model, arch)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        maps = []
        if isinstance(m, ResNet):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            for name in m.stages:
                x = getattr(m, name)(x)
                maps.append(x)
            logits = m.forward_head(x)
        else:
            for child, shown in zip(m[0].children(), self.shown, strict=True):
                x = child(x)
                if shown:
                    maps.append(x)
            logits = m[1](x)
        outputs = [logits, *maps]
        if self.cam:
            outputs.append(torch.einsum("kc,nchw->nkhw", m.fc.weight, x))
        return tuple(outputs)


def _body_names(model: nn.Module, arch: str) -> tuple[str, ...]:
    """The network's own names for the children of a fastai body (``models.archs.body_children``: the body is an
    ``nn.Sequential`` with positional names), or () when ``model`` is not a body + head cut from ``arch``."""
    if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], nn.Sequential) and arch):
        return ()
    try:
        names = body_children(arch)
    except (KeyError, ValueError):  # an arch the table does not know (a torchvision body + create_head …)
        return ()
    return names if len(names) == len(model[0]) else ()


def stage_names(model: nn.Module, arch: str = "") -> tuple[str, ...]:
    """The stages to show: the ResNet's ``stages``, or, in a fastai body cut from one, the children that were its
    ``layer…``."""
    if isinstance(model, ResNet):
        return tuple(getattr(model, "stages", ()))
    return tuple(n for n in _body_names(model, arch) if n.startswith("layer"))


def supports(model: nn.Module, arch: str = "") -> bool:
    """Whether the explain graph can show this network's stages: the project's ResNets with either head; other
    architectures are explained by occlusion only."""
    return bool(stage_names(model, arch))


def has_cam(model: nn.Module) -> bool:
    """Whether the head is global-average-pool + one linear layer, for which CAM is exact."""
    pool = getattr(model, "avgpool", None)
    return (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
            and isinstance(getattr(model, "fc", None), nn.Linear))


def output_names(model: nn.Module, arch: str = "") -> list[str]:
    return [OUTPUT_NAME, *(STAGE_PREFIX + s for s in stage_names(model, arch)),
            *([CAM_OUTPUT] if has_cam(model) else [])]


def export_explain(folded: nn.Module, reference: nn.Module, example: torch.Tensor, samples: np.ndarray, path: Path,
                   atol: float, export: Callable[..., None], arch: str = "") -> tuple[ExplainGraph, dict[str, Any]]:
    """Export ``folded`` as the explain graph at ``path`` and compare every output with ``reference`` (the unfolded
    PyTorch model) on ``samples``: logits and CAM within ``atol``, feature maps within ``atol`` times their
    scale. Returns the manifest entry (without sha256 filled by the caller) and the verification record."""
    names = output_names(folded, arch)
    export(Explainer(folded, arch).eval(), example, path, names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(names, {INPUT_NAME: samples.astype(np.float32)})
    with torch.no_grad():
        want = [t.numpy() for t in Explainer(reference, arch).eval()(torch.from_numpy(samples))]
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
