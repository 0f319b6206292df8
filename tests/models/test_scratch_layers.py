"""Every NumPy layer in models/scratch against its torch.nn.functional / torch.nn twin, over random configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from models import scratch
from models.scratch.conv import conv2d_nhwc
from models.scratch.layout import to_nchw, to_nhwc
from models.shapes import conv_output_size, pool_output_size

ATOL32 = 1e-5


def _max_diff(a: np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    if not a.size:
        return 0.0
    # Equal infinities count as equal: a max-pool window that lies wholly in the padding is −∞ in both.
    with np.errstate(invalid="ignore"):
        return float(np.where(a == b, 0.0, np.abs(a - b)).max())


@st.composite
def conv_cases(draw: st.DrawFn, max_hw: int = 9) -> dict:
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    case = dict(
        n=draw(st.integers(1, 2)), groups=groups,
        cin=groups * draw(st.integers(1, 3)), cout=groups * draw(st.integers(1, 3)),
        h=draw(st.integers(1, max_hw)), w=draw(st.integers(1, max_hw)),
        kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        dilation=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        pads=((draw(st.integers(0, 3)), draw(st.integers(0, 3))), (draw(st.integers(0, 3)), draw(st.integers(0, 3)))),
        bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )
    for size, k, s, p, d in ((case["h"], case["kh"], case["stride"][0], case["pads"][0], case["dilation"][0]),
                             (case["w"], case["kw"], case["stride"][1], case["pads"][1], case["dilation"][1])):
        assume(size + p[0] + p[1] >= d * (k - 1) + 1)
        conv_output_size(size, k, s, p, d)
    return case


def _conv_arrays(c: dict, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["n"], c["cin"], c["h"], c["w"])).astype(dtype)
    w = rng.standard_normal((c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])).astype(dtype)
    b = rng.standard_normal(c["cout"]).astype(dtype) if c["bias"] else None
    return x, w, b


def _torch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, c: dict) -> torch.Tensor:
    (top, bottom), (left, right) = c["pads"]
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))  # torch's conv pads symmetrically only
    return F.conv2d(xt, torch.from_numpy(w), None if b is None else torch.from_numpy(b), stride=c["stride"],
                    dilation=c["dilation"], groups=c["groups"])


# ---- convolution ------------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(conv_cases())
def test_conv2d_matches_torch(c: dict) -> None:
    x, w, b = _conv_arrays(c)
    got = scratch.conv2d(x, w, b, stride=c["stride"], padding=c["pads"], dilation=c["dilation"], groups=c["groups"])
    assert _max_diff(got, _torch_conv(x, w, b, c)) <= ATOL32


@settings(max_examples=40, deadline=None)
@given(conv_cases(max_hw=6))
def test_naive_and_vectorised_conv_agree_in_float64(c: dict) -> None:
    x, w, b = _conv_arrays(c, np.float64)
    kw = dict(stride=c["stride"], padding=c["pads"], dilation=c["dilation"], groups=c["groups"])
    naive = scratch.conv2d_naive(x, w, b, **kw)
    assert _max_diff(scratch.conv2d(x, w, b, **kw), naive) <= 1e-12
    assert _max_diff(naive, _torch_conv(x, w, b, c)) <= 1e-12


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
@pytest.mark.parametrize("padding", [0, 1, (1, 2), ((0, 1), (2, 0)), "same", "valid"])
def test_conv2d_padding_forms(padding: object) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 2)).astype(np.float32)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        (t, bo), (le, r) = padding
        expected = F.conv2d(F.pad(torch.from_numpy(x), (le, r, t, bo)), torch.from_numpy(w))
    else:
        expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=padding)
    assert _max_diff(scratch.conv2d(x, w, padding=padding), expected) <= ATOL32


def test_conv2d_tiles_large_inputs_like_one_matrix() -> None:
    # 40×40 output rows per sample exceed one im2col tile, so the output-row tiling path runs.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 40, 40, 64)).astype(np.float32)
    w = rng.standard_normal((8, 64, 3, 3)).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(to_nchw(x)), torch.from_numpy(w), padding=1)
    assert _max_diff(to_nchw(conv2d_nhwc(x, w, padding=1)), expected) <= 1e-4


def test_conv2d_refuses_bad_shapes() -> None:
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="groups=3"):
        scratch.conv2d(x, np.zeros((3, 1, 3, 3), np.float32), groups=3)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        scratch.conv2d(x, np.zeros((2, 4, 7, 7), np.float32))
    with pytest.raises(ValueError, match="stride 1"):
        scratch.conv2d(x, np.zeros((2, 4, 3, 3), np.float32), stride=2, padding="same")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        scratch.conv2d(x[0], np.zeros((2, 4, 3, 3), np.float32))


# ---- batch norm -------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(4, 3), (2, 5, 7), (3, 4, 5, 6), (2, 2, 1, 3), (5, 1, 2, 2)]),
       momentum=st.sampled_from([0.1, 0.5, 1.0, None]), affine=st.booleans(), seed=st.integers(0, 2**16))
def test_batch_norm_train_then_eval_matches_torch(shape: tuple[int, ...], momentum: float | None, affine: bool,
                                                  seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = shape[1]
    torch_bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(c, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            torch_bn.weight.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
            torch_bn.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
    bn = scratch.BatchNorm(
        weight=torch_bn.weight.detach().numpy().copy() if affine else None,
        bias=torch_bn.bias.detach().numpy().copy() if affine else None,
        running_mean=np.zeros(c, np.float32), running_var=np.ones(c, np.float32), momentum=momentum,
    )
    torch_bn.train()
    for _ in range(3):  # three steps: the running estimates compound
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        assert _max_diff(bn(x, training=True), torch_bn(torch.from_numpy(x))) <= ATOL32
    assert _max_diff(bn.running_mean, torch_bn.running_mean) <= ATOL32
    assert _max_diff(bn.running_var, torch_bn.running_var) <= ATOL32  # unbiased n/(n-1) variance
    assert bn.num_batches_tracked == int(torch_bn.num_batches_tracked)
    torch_bn.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    assert _max_diff(bn(x), torch_bn(torch.from_numpy(x))) <= ATOL32


def test_functional_batch_norm_eval_and_dimension_checks() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    gamma, beta = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    expected = F.batch_norm(*(torch.from_numpy(a) for a in (x, mean, var, gamma, beta)), training=False, eps=1e-3)
    assert _max_diff(scratch.batch_norm2d(x, mean, var, gamma, beta, eps=1e-3), expected) <= ATOL32
    with pytest.raises(ValueError, match="batch_norm2d"):
        scratch.batch_norm2d(x[0], mean, var)
    with pytest.raises(ValueError, match="batch_norm1d"):
        scratch.batch_norm1d(x, mean, var)
    with pytest.raises(ValueError, match="more than 1 value"):
        scratch.batch_norm1d(x[:1, :, 0, 0], mean.copy(), var.copy(), training=True)


# ---- pooling ----------------------------------------------------------------------------------------------------

@st.composite
def pool_cases(draw: st.DrawFn, dilation: bool) -> dict:
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    case = dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.integers(1, 10))),
        kernel=k, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))),
        dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1),
        ceil_mode=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )
    for a in (0, 1):
        try:
            pool_output_size(case["shape"][2 + a], k[a], case["stride"][a], case["padding"][a], case["dilation"][a],
                             case["ceil_mode"])
        except ValueError:
            assume(False)
    return case


@settings(max_examples=120, deadline=None)
@given(pool_cases(dilation=True))
def test_max_pool2d_matches_torch(c: dict) -> None:
    x = np.random.default_rng(c["seed"]).standard_normal(c["shape"]).astype(np.float32)
    kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], ceil_mode=c["ceil_mode"])
    expected = F.max_pool2d(torch.from_numpy(x), c["kernel"], **kw)
    assert _max_diff(scratch.max_pool2d(x, c["kernel"], **kw), expected) <= 0.0
    assert _max_diff(to_nchw(scratch.max_pool2d(to_nhwc(x), c["kernel"], channels_last=True, **kw)), expected) <= 0


@settings(max_examples=120, deadline=None)
@given(pool_cases(dilation=False), st.booleans(), st.sampled_from([None, None, 3]))
def test_avg_pool2d_matches_torch(c: dict, count_include_pad: bool, divisor_override: int | None) -> None:
    x = np.random.default_rng(c["seed"]).standard_normal(c["shape"]).astype(np.float32)
    kw = dict(stride=c["stride"], padding=c["padding"], ceil_mode=c["ceil_mode"],
              count_include_pad=count_include_pad, divisor_override=divisor_override)
    expected = F.avg_pool2d(torch.from_numpy(x), c["kernel"], **kw)
    assert _max_diff(scratch.avg_pool2d(x, c["kernel"], **kw), expected) <= ATOL32
    got_nhwc = scratch.avg_pool2d(to_nhwc(x), c["kernel"], channels_last=True, **kw)
    assert _max_diff(to_nchw(got_nhwc), expected) <= ATOL32


@pytest.mark.parametrize(("hw", "out"), [((7, 5), (3, 2)), ((4, 4), 1), ((5, 9), (5, 4)), ((3, 3), (6, 4)),
                                          ((6, 6), (None, 2))])
def test_adaptive_pools_match_torch(hw: tuple[int, int], out: object) -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, *hw)).astype(np.float32)
    xt = torch.from_numpy(x)
    assert _max_diff(scratch.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(xt, out)) <= ATOL32
    assert _max_diff(scratch.adaptive_max_pool2d(x, out), F.adaptive_max_pool2d(xt, out)) <= 0.0


def test_global_pools_match_torch() -> None:
    x = np.random.default_rng(5).standard_normal((3, 4, 5, 6)).astype(np.float32)
    xt = torch.from_numpy(x)
    assert _max_diff(scratch.global_avg_pool2d(x), F.adaptive_avg_pool2d(xt, 1)) <= ATOL32
    assert _max_diff(scratch.global_max_pool2d(x), F.adaptive_max_pool2d(xt, 1)) <= 0.0
    assert scratch.global_avg_pool2d(x, keepdims=False).shape == (3, 4)


# ---- linear, flatten, activations -------------------------------------------------------------------------------

def test_linear_and_flatten_match_torch() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 2, 5)).astype(np.float32)
    w, b = rng.standard_normal((7, 20)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    flat = scratch.flatten(x)
    assert _max_diff(flat, torch.flatten(torch.from_numpy(x), 1)) == 0.0
    expected = F.linear(torch.from_numpy(flat), torch.from_numpy(w), torch.from_numpy(b))
    assert _max_diff(scratch.linear(flat, w, b), expected) <= ATOL32
    assert _max_diff(scratch.linear(flat, w), F.linear(torch.from_numpy(flat), torch.from_numpy(w))) <= ATOL32
    with pytest.raises(ValueError, match="20"):
        scratch.linear(flat[:, :5], w, b)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_softmax_and_log_softmax_are_stable(scale: float) -> None:
    x = (np.random.default_rng(7).standard_normal((4, 10)) * scale).astype(np.float32)
    xt = torch.from_numpy(x)
    p = scratch.softmax(x)
    assert np.isfinite(p).all()
    assert _max_diff(p, F.softmax(xt, dim=-1)) <= ATOL32
    logp = scratch.log_softmax(x)
    assert np.isfinite(logp).all()
    assert np.abs(logp - F.log_softmax(xt, dim=-1).numpy()).max() <= ATOL32 * max(1.0, scale / 100)
    assert _max_diff(scratch.softmax(x, axis=0), F.softmax(xt, dim=0)) <= ATOL32


def test_relu_matches_torch() -> None:
    x = np.random.default_rng(8).standard_normal((2, 3, 4)).astype(np.float32)
    assert _max_diff(scratch.relu(x), F.relu(torch.from_numpy(x))) == 0.0
    y = x.copy()
    assert scratch.relu(y, inplace=True) is y
    assert _max_diff(y, F.relu(torch.from_numpy(x))) == 0.0
