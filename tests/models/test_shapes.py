"""models/shapes.py against PyTorch's own layers: output sizes, paddings, receptive fields."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.shapes import (
    Window,
    adaptive_pool_bins,
    conv_output_size,
    extend_receptive_field,
    padding_pairs,
    pool_output_size,
    receptive_field,
    same_padding,
    symmetric_padding,
)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 12), kernel=st.integers(1, 5), stride=st.integers(1, 3), before=st.integers(0, 3),
       after=st.integers(0, 3), dilation=st.integers(1, 3))
def test_conv_output_size_matches_torch(size: int, kernel: int, stride: int, before: int, after: int,
                                        dilation: int) -> None:
    x = F.pad(torch.zeros(1, 1, 1, size), (before, after))
    w = torch.zeros(1, 1, 1, kernel)
    try:
        expected = F.conv2d(x, w, stride=(1, stride), dilation=(1, dilation)).shape[-1]
    except RuntimeError:
        with pytest.raises(ValueError, match="smaller than the kernel"):
            conv_output_size(size, kernel, stride, (before, after), dilation)
        return
    assert conv_output_size(size, kernel, stride, (before, after), dilation) == expected


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 12), kernel=st.integers(1, 5), stride=st.integers(1, 3), padding=st.integers(0, 3),
       dilation=st.integers(1, 2), ceil_mode=st.booleans())
def test_pool_output_size_matches_torch_including_refusals(size: int, kernel: int, stride: int, padding: int,
                                                           dilation: int, ceil_mode: bool) -> None:
    x = torch.zeros(1, 1, 1, size)
    try:
        expected = F.max_pool2d(x, (1, kernel), (1, stride), (0, padding), (1, dilation), ceil_mode).shape[-1]
    except RuntimeError:
        with pytest.raises(ValueError, match=r"too small|kernel // 2"):
            pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
        return
    assert pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == expected


def test_pool_ceil_mode_keeps_one_window_where_conv_refuses() -> None:
    # fastai's xresnet shortcut: AvgPool2d(2, ceil_mode=True) on a 1×1 map.
    assert F.avg_pool2d(torch.zeros(1, 1, 1, 1), 2, ceil_mode=True).shape[-1] == 1
    assert pool_output_size(1, 2, 2, ceil_mode=True) == 1
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv_output_size(1, 2, 2, ceil_mode=True)
    with pytest.raises(ValueError, match="too small"):
        pool_output_size(1, 2, 2)
    with pytest.raises(ValueError, match="kernel // 2"):
        pool_output_size(8, 3, 2, padding=2)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
@pytest.mark.parametrize(("kernel", "dilation"), itertools.product([1, 2, 3, 4, 5, 7], [1, 2, 3]))
def test_same_padding_matches_torch_same(kernel: int, dilation: int) -> None:
    before, after = same_padding(kernel, 1, dilation)
    x = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    w = torch.randn(1, 1, kernel, kernel, dtype=torch.float64)
    expected = F.conv2d(x, w, padding="same", dilation=dilation)
    got = F.conv2d(F.pad(x, (before, after, before, after)), w, dilation=dilation)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("size", "kernel", "stride"), [(224, 7, 2), (225, 3, 2), (32, 1, 2), (5, 3, 3)])
def test_same_padding_with_stride_gives_ceil_size(size: int, kernel: int, stride: int) -> None:
    pads = same_padding(kernel, stride, 1, size)
    assert conv_output_size(size, kernel, stride, pads) == -(-size // stride)


def test_symmetric_padding_keeps_size() -> None:
    for kernel, dilation in itertools.product([1, 3, 5, 7], [1, 2, 3]):
        p = symmetric_padding(kernel, dilation)
        assert conv_output_size(17, kernel, 1, p, dilation) == 17


def test_padding_pairs_forms() -> None:
    assert padding_pairs(2) == ((2, 2), (2, 2))
    assert padding_pairs((1, 3)) == ((1, 1), (3, 3))
    assert padding_pairs(((0, 1), (2, 3))) == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match=">= 0"):
        padding_pairs(-1)
    with pytest.raises(ValueError, match="padding must be"):
        padding_pairs((1, 2, 3))  # type: ignore[arg-type]


@pytest.mark.parametrize(("size", "out"), [(7, 3), (5, 5), (10, 4), (3, 7), (1, 1), (9, 2)])
def test_adaptive_bins_match_torch(size: int, out: int) -> None:
    # One-hot inputs reveal which inputs each adaptive-average cell reads.
    eye = torch.eye(size, dtype=torch.float64).reshape(size, 1, size)
    cells = F.adaptive_avg_pool1d(eye, out)[:, 0, :]  # (input i, cell j)
    expected = [(int((cells[:, j] > 0).nonzero().min()), int((cells[:, j] > 0).nonzero().max()) + 1)
                for j in range(out)]
    assert adaptive_pool_bins(size, out) == expected


def test_receptive_field_known_values() -> None:
    # Two 3×3 convolutions see 5×5; three see 7×7 (Simonyan & Zisserman 2015).
    assert receptive_field([Window(3)] * 2) == (5, 1)
    assert receptive_field([Window(3)] * 3) == (7, 1)
    # ResNet stem: 7×7/2 then 3×3/2 max-pool → 11 px, jump 4.
    assert receptive_field([Window(7, 2), Window(3, 2)]) == (11, 4)
    # Dilation 2 makes a 3×3 cover 5.
    assert receptive_field([Window(3, 1, 2)]) == (5, 1)
    assert extend_receptive_field(11, 4, Window(3)) == (19, 4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 2)), min_size=1, max_size=5))
def test_receptive_field_matches_gradient_support(layers: list[tuple[int, int, int]]) -> None:
    """The receptive field is the set of inputs whose gradient reaches output pixel 0 (no padding)."""
    rf, _ = receptive_field(Window(k, s, d) for k, s, d in layers)
    size = rf + 8
    x = torch.zeros(1, 1, 1, size, requires_grad=True)
    y = x
    for k, s, d in layers:
        y = F.conv2d(y, torch.ones(1, 1, 1, k, dtype=x.dtype), stride=(1, s), dilation=(1, d))
    y[..., 0].sum().backward()
    assert x.grad is not None
    touched = (x.grad[0, 0, 0] != 0).nonzero()
    assert int(touched.max()) - int(touched.min()) + 1 == rf
