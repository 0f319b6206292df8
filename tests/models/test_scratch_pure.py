"""models/scratch/pure.py, the lists-and-loops layers, against the NumPy reference and torch.nn.functional (float64,
tiny inputs: every multiply-add is one Python step)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import resnet, scratch
from models.scratch import pure
from models.scratch.bench import random_block_state
from models.scratch.blocks import BasicBlock
from models.scratch.layout import to_nchw, to_nhwc
from models.scratch.state import StateReader

ATOL = 1e-12


def _image(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((c, h, w))


def _close(ours: list, *others: np.ndarray | torch.Tensor) -> None:
    got = np.array(ours, dtype=np.float64)
    for other in others:
        want = other.detach().numpy() if isinstance(other, torch.Tensor) else np.asarray(other)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize(("hw", "kernel", "stride", "padding", "dilation", "bias"), [
    ((5, 5), 3, 1, 0, 1, False),
    ((6, 5), 3, 1, 1, 1, True),
    ((7, 7), 3, 2, 1, 1, True),
    ((7, 6), 2, 2, 0, 1, False),
    ((7, 7), 3, 1, 2, 2, True),
    ((8, 7), 3, 3, 1, 2, False),
    ((4, 4), 1, 2, 0, 1, True),
])
def test_conv2d_equals_numpy_and_torch(hw, kernel, stride, padding, dilation, bias) -> None:
    x = _image(2, *hw)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, kernel, kernel))
    b = rng.standard_normal(3) if bias else None
    ours = pure.conv2d(x.tolist(), w.tolist(), None if b is None else b.tolist(), stride, padding, dilation)
    args = dict(stride=stride, padding=padding, dilation=dilation)
    _close(ours, scratch.conv2d(x[None], w, b, **args)[0],
           F.conv2d(torch.from_numpy(x[None]), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                    **args)[0])


def test_batch_norm_relu_equal_numpy_and_torch() -> None:
    x = _image(3, 4, 5)
    state = random_block_state(3, 3)
    stats = [state[f"bn1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
    ours = pure.batch_norm(x.tolist(), pure.BatchNormParams(*(stats[i].tolist() for i in (2, 3, 0, 1))))
    _close(ours, scratch.batch_norm2d(x[None], *stats)[0],
           F.batch_norm(torch.from_numpy(x[None]), *map(torch.from_numpy, stats), training=False)[0])
    _close(pure.relu(ours), F.relu(torch.tensor(ours, dtype=torch.float64)), scratch.relu(np.array(ours)))


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, None, 0), (3, 2, 1), (3, 1, 1), (2, 1, 1)])
def test_pooling_equals_numpy_and_torch(kernel, stride, padding) -> None:
    x = _image(2, 5, 6, seed=2)
    xt = torch.from_numpy(x[None])
    _close(pure.max_pool2d(x.tolist(), kernel, stride, padding),
           scratch.max_pool2d(x[None], kernel, stride, padding)[0], F.max_pool2d(xt, kernel, stride, padding)[0])
    _close(pure.avg_pool2d(x.tolist(), kernel, stride, padding),
           scratch.avg_pool2d(x[None], kernel, stride, padding)[0], F.avg_pool2d(xt, kernel, stride, padding)[0])
    _close(pure.global_avg_pool2d(x.tolist()), scratch.global_avg_pool2d(x[None], keepdims=False)[0],
           F.adaptive_avg_pool2d(xt, 1)[0, :, 0, 0])


@pytest.mark.parametrize(("inplanes", "planes", "stride"), [(3, 3, 1), (2, 4, 2)])
def test_basic_block_equals_numpy_and_torch(inplanes, planes, stride) -> None:
    """The identity shortcut, and the strided projection (1×1 conv → BN) where the width changes."""
    state = random_block_state(inplanes, planes, stride, seed=3)
    x = _image(inplanes, 6, 6, seed=4)
    ours = pure.basic_block_from_state(x.tolist(), {k: v.tolist() for k, v in state.items()}, stride)
    downsample = None
    if "downsample.0.weight" in state:
        downsample = torch.nn.Sequential(resnet.conv1x1(inplanes, planes, stride), torch.nn.BatchNorm2d(planes))
    block = resnet.BasicBlock(inplanes, planes, stride, downsample).double().eval()
    missing = block.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False).missing_keys
    assert all(k.endswith("num_batches_tracked") for k in missing)
    numpy_block = BasicBlock.from_state(StateReader(state, dtype=np.float64), "", stride=stride, in_channels=inplanes)
    with torch.no_grad():
        _close(ours, to_nchw(numpy_block(to_nhwc(x[None])))[0], block(torch.from_numpy(x[None]))[0])


def test_pure_imports_no_numpy() -> None:
    """Lists and loops only: the module imports the standard library and models.shapes (pure Python too)."""
    tree = ast.parse(Path(pure.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "collections.abc", "dataclasses", "models.shapes"}, imported
    shapes = ast.parse((Path(pure.__file__).parents[1] / "shapes.py").read_text())
    assert not [n for n in ast.walk(shapes) if isinstance(n, ast.Import | ast.ImportFrom) and "numpy" in ast.unparse(n)]
