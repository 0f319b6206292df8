"""models/archs.py is the one architecture table: the PyTorch models and the NumPy reference are both built from it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from torch import nn

from models import archs, registry, resnet, scratch
from models.scratch.blocks import ResidualBlock
from models.summary import summarize_model


def _create(arch: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fastai's import-time torch.jit notice
        return registry.create(arch, 3, 3).eval()


def _torch_stages(model: nn.Module, spec: archs.ResNetSpec | archs.XResNetSpec) -> list[nn.Sequential]:
    if isinstance(spec, archs.XResNetSpec):  # fastai's XResNet: 3 stem ConvLayers, the max-pool, then the stages
        return [model[4 + i] for i in range(len(spec.layers))]
    return [getattr(model, f"layer{i + 1}") for i in range(len(spec.layers))]


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_the_table_drives_torch_and_numpy(arch: str) -> None:
    spec = archs.spec(arch)
    model = _create(arch)
    stages = _torch_stages(model, spec)
    assert [len(stage) for stage in stages] == list(spec.layers)
    if isinstance(spec, archs.ResNetSpec):
        first = stages[0][0]
        assert first.expansion == archs.EXPANSION[spec.block]
        assert any(block.downsample is not None for stage in stages for block in stage) == spec.skip
        stem = archs.STEMS[spec.stem]
        assert (model.conv1.kernel_size, model.conv1.stride) == ((stem.kernel,) * 2, (stem.stride,) * 2)
        assert isinstance(model.maxpool, nn.MaxPool2d) == (stem.pool is not None)
    else:
        assert len(stages[0][0].convpath) == (2 if spec.expansion == 1 else 3)

    net = scratch.from_checkpoint(arch, {"num_classes": 3}, model.state_dict())
    blocks = [layer for layer in net.body.layers if isinstance(layer, ResidualBlock)]
    assert len(blocks) == sum(spec.layers)

    # downsampling(): the total stride of the body, as the summary's receptive-field walk finds it.
    rows = summarize_model(model, (3, 64, 64), arch).rows
    head = next(i for i, r in enumerate(rows) if r.type.startswith("Adaptive"))
    assert rows[head - 1].jump == (registry.downsampling(arch),) * 2


def test_public_names_read_the_table() -> None:
    assert registry.ARCHS == archs.ARCHS == scratch.SUPPORTED_ARCHS
    assert tuple(archs.RESNET_SPECS) == resnet.ARCHS
    assert registry.ARCHS[:len(resnet.ARCHS)] == resnet.ARCHS  # the project's own first, as before
    assert [registry.family(a) for a in ("resnet20", "xresnet18", "tv_resnet50")] == [
        "project", "xresnet", "torchvision"]
    with pytest.raises(ValueError, match=r"unknown arch 'resnet19'; choose one of resnet18"):
        archs.spec("resnet19")


@pytest.mark.parametrize(("module", "unwanted"), [("models.archs", {"torch", "numpy"}), ("models.scratch", {"torch"}),
                                                  ("models.classic", {"torch", "numpy"})])
def test_light_modules_stay_light(module: str, unwanted: set[str]) -> None:
    """The tables (the project's and the classic architectures') import neither torch nor NumPy; the NumPy reference
    does not import torch."""
    code = f"import sys, {module}; sys.exit(1 if {unwanted!r} & set(sys.modules) else 0)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
