"""BatchNorm folding: the folded layer equals the unfolded pair (NumPy and PyTorch) within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from models import scratch


def _random_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, rng: np.random.Generator) -> None:
    """Non-trivial statistics and affine parameters, as after training."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 3.0, c).astype(np.float32)))
        if bn.affine:
            bn.weight.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
    bn.eval()


def _bn_args(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple:
    def arr(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().numpy()

    return arr(bn.weight), arr(bn.bias), arr(bn.running_mean), arr(bn.running_var), bn.eps


@pytest.mark.parametrize("affine", [True, False])
def test_bn_scale_shift_is_the_eval_mode_layer(affine: bool) -> None:
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(5, eps=1e-3, affine=affine)
    _random_bn(bn, rng)
    x = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    scale, shift = scratch.bn_scale_shift(*_bn_args(bn))
    assert scale.dtype == shift.dtype == np.float64
    with torch.no_grad():
        expected = bn(torch.from_numpy(x)).numpy()
    assert np.abs(x * scale[:, None, None] + shift[:, None, None] - expected).max() <= 1e-5


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bias=st.booleans(), affine=st.booleans(), groups=st.sampled_from([1, 2]),
       stride=st.integers(1, 2), eps=st.sampled_from([1e-5, 1e-3]))
def test_fold_conv_bn(seed: int, bias: bool, affine: bool, groups: int, stride: int, eps: float) -> None:
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(6, eps=eps, affine=affine)
    _random_bn(bn, rng)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    with torch.no_grad():
        expected = bn(conv(torch.from_numpy(x))).numpy()
    w, b = scratch.fold_conv_bn(conv.weight.detach().numpy(), None if conv.bias is None else conv.bias.detach().numpy(),
                                *_bn_args(bn))
    folded = scratch.conv2d(x, w, b, stride=stride, padding=1, groups=groups)
    assert np.abs(folded - expected).max() <= 1e-5
    gamma, beta, mean, var, _ = _bn_args(bn)
    cb = None if conv.bias is None else conv.bias.detach().numpy()
    unfolded = scratch.batch_norm2d(scratch.conv2d(x, conv.weight.detach().numpy(), cb, stride=stride, padding=1,
                                                   groups=groups), mean, var, gamma, beta, eps=eps)
    assert np.abs(folded - unfolded).max() <= 1e-5
    assert w.dtype == np.float32
    assert b.dtype == np.float32


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bias=st.booleans(), affine=st.booleans())
def test_fold_bn_linear_fastai_head(seed: int, bias: bool, affine: bool) -> None:
    """fastai's head: BatchNorm1d → Dropout → Linear; dropout is the identity in eval mode."""
    rng = np.random.default_rng(seed)
    bn, drop, lin = nn.BatchNorm1d(8, affine=affine), nn.Dropout(0.5), nn.Linear(8, 3, bias=bias)
    _random_bn(bn, rng)
    head = nn.Sequential(bn, drop, lin).eval()
    x = rng.standard_normal((5, 8)).astype(np.float32)
    with torch.no_grad():
        expected = head(torch.from_numpy(x)).numpy()
    w, b = scratch.fold_bn_linear(*_bn_args(bn), lin.weight.detach().numpy(),
                                  None if lin.bias is None else lin.bias.detach().numpy())
    assert np.abs(scratch.linear(x, w, b) - expected).max() <= 1e-5


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bias=st.booleans())
def test_fold_linear_bn(seed: int, bias: bool) -> None:
    rng = np.random.default_rng(seed)
    lin, bn = nn.Linear(8, 6, bias=bias), nn.BatchNorm1d(6)
    _random_bn(bn, rng)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    with torch.no_grad():
        expected = bn(lin(torch.from_numpy(x))).numpy()
    w, b = scratch.fold_linear_bn(lin.weight.detach().numpy(), None if lin.bias is None else lin.bias.detach().numpy(),
                                  *_bn_args(bn))
    assert np.abs(scratch.linear(x, w, b) - expected).max() <= 1e-5


def test_fold_refuses_mismatched_channels() -> None:
    w = np.zeros((4, 3, 3, 3), np.float32)
    c5 = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="4 output channels"):
        scratch.fold_conv_bn(w, None, c5, c5, c5, c5, 1e-5)
    with pytest.raises(ValueError, match="does not take"):
        scratch.fold_bn_linear(c5, c5, c5, c5, 1e-5, np.zeros((2, 4), np.float32), None)
    with pytest.raises(ValueError, match=r"\(out, in\)"):
        scratch.fold_linear_bn(w, None, c5, c5, c5, c5, 1e-5)
