"""BatchNorm folding: every pattern, every architecture family, fused == unfused in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models import registry
from models.scratch import fold_bn_linear, fold_conv_bn, fold_linear_bn
from tests.support.runs import body_and_head, random_model, randomize_batchnorm
from training.fold import Affine, fold_batchnorm, fuse_bn_linear, fuse_conv_bn, fuse_linear_bn


def _bn(n: int, dim: int = 2, seed: int = 0) -> _BatchNorm:
    gen = torch.Generator().manual_seed(seed)
    bn = (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(n)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(n, generator=gen))
        bn.bias.copy_(torch.randn(n, generator=gen))
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        bn.running_var.copy_(0.1 + torch.rand(n, generator=gen))
    return bn.eval()


def _no_batchnorm(model: nn.Module) -> bool:
    return not any(isinstance(m, _BatchNorm) for m in model.modules())


@pytest.mark.parametrize(("groups", "bias"), [(1, False), (1, True), (4, False)])
def test_fuse_conv_bn_matches_conv_then_bn(groups: int, bias: bool) -> None:
    conv, bn = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=bias), _bn(8)
    x = torch.randn(2, 4, 9, 9)
    expected = bn(conv(x))
    fuse_conv_bn(conv, bn)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_fuse_linear_bn_and_bn_linear() -> None:
    x = torch.randn(4, 7)
    lin, bn = nn.Linear(7, 5), _bn(5, dim=1)
    expected = bn(lin(x))
    fuse_linear_bn(lin, bn)
    torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)

    bn, lin = _bn(7, dim=1, seed=1), nn.Linear(7, 3, bias=False)
    expected = lin(bn(x))
    fuse_bn_linear(bn, lin)
    torch.testing.assert_close(lin(x), expected, atol=1e-5, rtol=1e-5)


FAMILIES = [
    # arch, in_chans, size, conv→BN pairs expected
    ("resnet20", 1, 16, 21),    # stem + 9 blocks × 2 + 2 projection shortcuts
    ("plain20", 1, 16, 19),     # no shortcut, no projection
    ("resnet18", 3, 32, 20),
    ("xresnet18", 3, 32, 22),   # fastai ConvLayer = Sequential(conv, BN, act); 3-conv stem
    ("tv_resnet18", 3, 32, 20),
]


@pytest.mark.parametrize(("arch", "in_chans", "size", "pairs"), FAMILIES)
def test_fold_every_family(arch: str, in_chans: int, size: int, pairs: int) -> None:
    model = random_model(arch, 7, in_chans, size)
    x = torch.randn(5, in_chans, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold_batchnorm(model, x)
    assert _no_batchnorm(folded)
    assert report.traced
    assert (len(report.conv_bn), report.affine) == (pairs, [])
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    # The caller's model is untouched: same weights, still holding its BatchNorms.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_body_and_create_head() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(body_and_head(), 3, 64)
    x = torch.randn(4, 3, 64, 64)
    folded, report = fold_batchnorm(model, x)
    assert _no_batchnorm(folded)
    # create_head: BatchNorm1d(1024) → Dropout → Linear and BatchNorm1d(512) → Dropout → Linear.
    assert report.bn_linear == [("1.2", "1.4"), ("1.6", "1.8")]
    assert (len(report.conv_bn), report.affine) == (20, [])
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_norm_false_has_nothing_to_fold() -> None:
    model = registry.create("resnet20", 3, 1, norm=False).eval()
    folded, report = fold_batchnorm(model, torch.randn(2, 1, 8, 8))
    assert report.summary()["conv_bn"] == 0
    assert _no_batchnorm(folded)


def test_linear_then_bn_in_sequential() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), _bn(6, dim=1), nn.ReLU(), nn.Linear(6, 2)).eval()
    x = torch.randn(3, 3, 2, 2)
    folded, report = fold_batchnorm(model, x)
    assert report.linear_bn == [("1", "2")]
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


class _PreActivation(nn.Module):
    """BN → ReLU → conv, and a conv whose output also feeds a shortcut: neither may be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0, self.conv0 = _bn(3, seed=2), nn.Conv2d(3, 3, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), _bn(3, seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.conv0(torch.relu(self.bn0(x))))
        return self.bn1(y) + y  # conv1's output goes to bn1 AND to the add


def test_unfoldable_batchnorm_becomes_affine() -> None:
    model = _PreActivation().eval()
    x = torch.randn(2, 3, 5, 5)
    folded, report = fold_batchnorm(model, x)
    assert report.conv_bn == []
    assert sorted(report.affine) == ["bn0", "bn1"]
    assert isinstance(folded.bn0, Affine)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), _bn(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model_falls_back_to_affine() -> None:
    model = _Untraceable().eval()
    x = torch.randn(2, 1, 6, 6)
    messages: list[str] = []
    folded, report = fold_batchnorm(model, x, log=messages.append)
    assert not report.traced
    assert report.affine == ["bn"]
    assert "cannot trace" in messages[0]
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded(-x), model(-x), atol=1e-5, rtol=1e-5)


def test_batchnorm_without_running_stats_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(model, torch.randn(2, 1, 5, 5))


def test_same_weights_as_numpy_folding() -> None:
    """The PyTorch folder and models.scratch's NumPy folder agree on the folded weights."""
    def stats(bn: _BatchNorm) -> list:
        """γ, β, running mean and variance as NumPy arrays, then ε: the NumPy folders' BatchNorm arguments."""
        p = {k: v.detach().numpy().copy() for k, v in bn.state_dict().items() if v.dtype.is_floating_point}
        return [p["weight"], p["bias"], p["running_mean"], p["running_var"], bn.eps]

    def weight(m: nn.Module) -> np.ndarray:
        return m.weight.detach().numpy().copy()

    def assert_same(folded: tuple[np.ndarray, np.ndarray], fused: nn.Module) -> None:
        np.testing.assert_allclose(folded[0], fused.weight.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(folded[1], fused.bias.detach().numpy(), rtol=1e-6, atol=1e-6)

    conv, bn = nn.Conv2d(3, 4, 3, bias=False), _bn(4)
    folded = fold_conv_bn(weight(conv), None, *stats(bn))
    fuse_conv_bn(conv, bn)
    assert_same(folded, conv)

    bn1, lin = _bn(4, dim=1, seed=5), nn.Linear(4, 2)
    folded = fold_bn_linear(*stats(bn1), weight(lin), lin.bias.detach().numpy().copy())
    fuse_bn_linear(bn1, lin)
    assert_same(folded, lin)

    lin, bn2 = nn.Linear(5, 4, bias=False), _bn(4, dim=1, seed=6)
    folded = fold_linear_bn(weight(lin), None, *stats(bn2))
    fuse_linear_bn(lin, bn2)
    assert_same(folded, lin)
