"""Max and average pooling, fixed-window and adaptive, with PyTorch's exact edge rules.

Fixed window (``max_pool2d``, ``avg_pool2d``): output sizes come from ``models.shapes.pool_output_size``
(PyTorch's ``pooling_output_shape``, including ceil_mode's "the last window must start inside the input or the
left padding"). The result is computed tap by tap: for each of the kh·kw kernel offsets (i, j) one strided slice of
the padded input holds that tap of every window, and the windows' max (or sum) is the running max (or sum) over
the taps — kh·kw vectorised operations, whatever the layout.

Average pooling divides each window's sum by (PyTorch's ``AvgPool2d`` CPU kernel):
- ``count_include_pad=True``: the window clipped to the *padded* input (a ceil_mode window hanging past the
  padding counts only its part inside it);
- ``count_include_pad=False``: the window clipped to the *real* input;
- ``divisor_override``: that number.

Adaptive pooling (``adaptive_avg_pool2d``, ``adaptive_max_pool2d``): output cell i covers input
[floor(i·n/o), ceil((i+1)·n/o)) (``models.shapes.adaptive_pool_bins``); global pooling is the o = 1 case.

References: ``torch.nn.MaxPool2d``/``AvgPool2d``/``AdaptiveAvgPool2d`` documentation; ATen's Pool.h and
AdaptiveAveragePooling.cpp for the edge cases; Dumoulin & Visin 2016, "A guide to convolution arithmetic".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.scratch.conv import pad2d
from models.shapes import IntPair, adaptive_pool_bins, effective_kernel, pair, pool_output_size

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "global_max_pool2d",
    "max_pool2d",
]


def _spatial_axes(channels_last: bool) -> tuple[int, int]:
    return (1, 2) if channels_last else (2, 3)


def _check4d(x: np.ndarray, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4-D (N, C, H, W) input, got shape {x.shape}")


class _Geometry:
    """Kernel, stride, padding, dilation and output size along H and W for one pooling call."""

    def __init__(self, hw: tuple[int, int], kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
                 dilation: IntPair, ceil_mode: bool) -> None:
        self.k = pair(kernel_size, "kernel_size")
        self.s = self.k if stride is None else pair(stride, "stride")
        self.p = pair(padding, "padding")
        self.d = pair(dilation, "dilation")
        self.n = hw
        self.out = tuple(pool_output_size(hw[a], self.k[a], self.s[a], self.p[a], self.d[a], ceil_mode)
                         for a in (0, 1))

    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Padding per side; the right/bottom side grows so that ceil_mode's last window fits."""
        pads = []
        for a in (0, 1):
            reach = (self.out[a] - 1) * self.s[a] + effective_kernel(self.k[a], self.d[a])
            pads.append((self.p[a], max(self.p[a], reach - self.n[a] - self.p[a])))
        return pads[0], pads[1]


def _reduce_taps(xp: np.ndarray, g: _Geometry, channels_last: bool,
                 combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Fold ``combine`` over the kh·kw taps; each tap is one strided slice of the padded input."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = g.k, g.s, g.d, g.out
    ah, _ = _spatial_axes(channels_last)
    acc: np.ndarray | None = None
    for i in range(kh):
        for j in range(kw):
            index: list[slice] = [slice(None)] * xp.ndim
            index[ah] = slice(i * dh, i * dh + (ho - 1) * sh + 1, sh)
            index[ah + 1] = slice(j * dw, j * dw + (wo - 1) * sw + 1, sw)
            tap = xp[tuple(index)]
            acc = tap.copy() if acc is None else combine(acc, tap, out=acc)  # type: ignore[call-arg]
    assert acc is not None  # kernel sizes are >= 1
    return acc


def max_pool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, channels_last: bool = False) -> np.ndarray:
    """Like ``F.max_pool2d``: the padding is −∞, so it never wins."""
    _check4d(x, "max_pool2d")
    ah, aw = _spatial_axes(channels_last)
    g = _Geometry((x.shape[ah], x.shape[aw]), kernel_size, stride, padding, dilation, ceil_mode)
    xp = pad2d(x, g.pads(), value=-np.inf, channels_last=channels_last)
    return _reduce_taps(xp, g, channels_last, np.maximum)


def _avg_divisor(n: int, k: int, s: int, p: int, out: int, count_include_pad: bool) -> np.ndarray:
    """Per output position along one dimension: how many elements PyTorch divides the window's sum by."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, n + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, n) - np.maximum(start, 0)


def avg_pool2d(x: np.ndarray, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
               channels_last: bool = False) -> np.ndarray:
    """Like ``F.avg_pool2d`` (zero padding; see the module docstring for the divisor)."""
    _check4d(x, "avg_pool2d")
    ah, aw = _spatial_axes(channels_last)
    g = _Geometry((x.shape[ah], x.shape[aw]), kernel_size, stride, padding, 1, ceil_mode)
    xp = pad2d(x, g.pads(), value=0.0, channels_last=channels_last)
    total = _reduce_taps(xp, g, channels_last, np.add)
    if divisor_override is not None:
        if divisor_override == 0:
            raise ValueError("divisor_override must be non-zero")
        return total / np.asarray(divisor_override, dtype=x.dtype)
    rows, cols = (_avg_divisor(g.n[a], g.k[a], g.s[a], g.p[a], g.out[a], count_include_pad) for a in (0, 1))
    # A window can be all padding only in degenerate cases; PyTorch leaves those outputs at 0.
    divisor = np.maximum(np.outer(rows, cols), 1).astype(x.dtype)
    return total / (divisor[:, :, None] if channels_last else divisor)


def _adaptive(x: np.ndarray, output_size: IntPair | tuple[int | None, int | None], channels_last: bool,
              reduce: Callable[..., np.ndarray], name: str) -> np.ndarray:
    _check4d(x, name)
    ah, aw = _spatial_axes(channels_last)
    h, w = x.shape[ah], x.shape[aw]
    oh, ow = (output_size, output_size) if isinstance(output_size, int | np.integer) else output_size
    oh, ow = int(h if oh is None else oh), int(w if ow is None else ow)
    out_shape = list(x.shape)
    out_shape[ah], out_shape[aw] = oh, ow
    out = np.empty(out_shape, dtype=x.dtype)
    for i, (h0, h1) in enumerate(adaptive_pool_bins(h, oh)):
        for j, (w0, w1) in enumerate(adaptive_pool_bins(w, ow)):
            src: list[slice | int] = [slice(None)] * x.ndim
            dst: list[slice | int] = [slice(None)] * x.ndim
            src[ah], src[aw] = slice(h0, h1), slice(w0, w1)
            dst[ah], dst[aw] = i, j
            out[tuple(dst)] = reduce(x[tuple(src)], axis=(ah, aw))
    return out


def adaptive_avg_pool2d(x: np.ndarray, output_size: IntPair | tuple[int | None, int | None],
                        channels_last: bool = False) -> np.ndarray:
    """Like ``F.adaptive_avg_pool2d``; ``None`` in ``output_size`` keeps that input size."""
    return _adaptive(x, output_size, channels_last, np.mean, "adaptive_avg_pool2d")


def adaptive_max_pool2d(x: np.ndarray, output_size: IntPair | tuple[int | None, int | None],
                        channels_last: bool = False) -> np.ndarray:
    """Like ``F.adaptive_max_pool2d`` (values only, no indices)."""
    return _adaptive(x, output_size, channels_last, np.max, "adaptive_max_pool2d")


def global_avg_pool2d(x: np.ndarray, keepdims: bool = True, channels_last: bool = False) -> np.ndarray:
    """Mean over H and W: (N, C, 1, 1), or (N, C) without ``keepdims``."""
    _check4d(x, "global_avg_pool2d")
    return x.mean(axis=_spatial_axes(channels_last), keepdims=keepdims, dtype=np.float64).astype(x.dtype)


def global_max_pool2d(x: np.ndarray, keepdims: bool = True, channels_last: bool = False) -> np.ndarray:
    """Max over H and W: (N, C, 1, 1), or (N, C) without ``keepdims``."""
    _check4d(x, "global_max_pool2d")
    return x.max(axis=_spatial_axes(channels_last), keepdims=keepdims)
