"""The network's arithmetic in its barest form: Python lists and ``for`` loops, no NumPy, no torch.

One image is a list of channels, a channel a list of rows, a row a list of floats: ``x[c][y][x]``. Implemented:

- ``conv2d`` with stride, zero padding and dilation (cross-correlation, as every framework means it):
      out[o][y][x] = b[o] + Σ_c Σ_i Σ_j  x[c][y·s − p + i·d][x·s − p + j·d] · w[o][c][i][j]
  (a tap that lands in the padding reads 0);
- ``batch_norm`` in eval mode, with the running statistics:  y = γ·(x − μ)/√(σ² + ε) + β, per channel;
- ``relu``: max(0, x);
- ``max_pool2d`` and ``avg_pool2d`` (padding counts as −∞ for max, as 0 for the average, which divides by k·k as
  PyTorch's default ``count_include_pad=True`` does), and ``global_avg_pool2d``;
- ``basic_block``: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut the identity or a strided
  1×1 conv → BN (He et al. 2015; models/resnet.py's BasicBlock).

The output size comes from ``models.shapes`` (pure Python too), the formula every other implementation uses.
Tested against ``models.scratch`` (NumPy) and ``torch.nn.functional`` in tests/models/test_scratch_pure.py. It is
slow by design — every multiply-add is one Python step; ``python -m models.scratch.bench pure`` times it against
the NumPy im2col convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from models.shapes import conv_output_size, pool_output_size

__all__ = ["BatchNormParams", "Image", "add", "avg_pool2d", "basic_block", "basic_block_from_state", "batch_norm",
           "conv2d", "global_avg_pool2d", "max_pool2d", "relu"]

Image = list[list[list[float]]]  # [channel][row][column]
Kernel = list[list[list[list[float]]]]  # [out channel][in channel][row][column]


def _at(channel: list[list[float]], y: int, x: int, pad_value: float) -> float:
    """One pixel, or ``pad_value`` outside the image."""
    if 0 <= y < len(channel) and 0 <= x < len(channel[0]):
        return channel[y][x]
    return pad_value


def conv2d(x: Image, weight: Kernel, bias: list[float] | None = None, stride: int = 1, padding: int = 0,
           dilation: int = 1) -> Image:
    """Cross-correlation of one (C, H, W) image with (O, C, kh, kw) weights."""
    height, width = len(x[0]), len(x[0][0])
    kh, kw = len(weight[0][0]), len(weight[0][0][0])
    out_h = conv_output_size(height, kh, stride, padding, dilation)
    out_w = conv_output_size(width, kw, stride, padding, dilation)
    out = []
    for o in range(len(weight)):  # every output channel …
        channel = []
        for oy in range(out_h):  # … and output pixel:
            row = []
            for ox in range(out_w):
                top, left = oy * stride - padding, ox * stride - padding  # the window's corner in x
                acc = bias[o] if bias is not None else 0.0
                for c in range(len(x)):  # the sum over input channels and kernel taps
                    for i in range(kh):
                        for j in range(kw):
                            acc += _at(x[c], top + i * dilation, left + j * dilation, 0.0) * weight[o][c][i][j]
                row.append(acc)
            channel.append(row)
        out.append(channel)
    return out


@dataclass(frozen=True)
class BatchNormParams:
    """γ (weight), β (bias), running mean and variance, one value per channel."""

    weight: list[float]
    bias: list[float]
    mean: list[float]
    var: list[float]
    eps: float = 1e-5


def batch_norm(x: Image, bn: BatchNormParams) -> Image:
    """Eval-mode batch norm: each channel shifted and scaled by its running statistics."""
    out = []
    for c, channel in enumerate(x):
        scale = bn.weight[c] / math.sqrt(bn.var[c] + bn.eps)
        out.append([[(v - bn.mean[c]) * scale + bn.bias[c] for v in row] for row in channel])
    return out


def relu(x: Image) -> Image:
    return [[[v if v > 0.0 else 0.0 for v in row] for row in channel] for channel in x]


def _pool(x: Image, kernel: int, stride: int, padding: int, pad_value: float,
          reduce: Callable[[list[float]], float]) -> Image:
    """Each window's taps (padding included as ``pad_value``) reduced to one number."""
    height, width = len(x[0]), len(x[0][0])
    out_h = pool_output_size(height, kernel, stride, padding)
    out_w = pool_output_size(width, kernel, stride, padding)
    out = []
    for channel in x:
        pooled = []
        for oy in range(out_h):
            row = []
            for ox in range(out_w):
                top, left = oy * stride - padding, ox * stride - padding
                row.append(reduce([_at(channel, top + i, left + j, pad_value)
                                   for i in range(kernel) for j in range(kernel)]))
            pooled.append(row)
        out.append(pooled)
    return out


def max_pool2d(x: Image, kernel: int, stride: int | None = None, padding: int = 0) -> Image:
    return _pool(x, kernel, stride or kernel, padding, -math.inf, max)


def avg_pool2d(x: Image, kernel: int, stride: int | None = None, padding: int = 0) -> Image:
    return _pool(x, kernel, stride or kernel, padding, 0.0, lambda taps: sum(taps) / len(taps))


def global_avg_pool2d(x: Image) -> list[float]:
    """One mean per channel."""
    return [sum(sum(row) for row in channel) / (len(channel) * len(channel[0])) for channel in x]


def add(a: Image, b: Image) -> Image:
    return [[[u + v for u, v in zip(ra, rb, strict=True)] for ra, rb in zip(ca, cb, strict=True)]
            for ca, cb in zip(a, b, strict=True)]


def basic_block(x: Image, conv1: Kernel, bn1: BatchNormParams, conv2: Kernel, bn2: BatchNormParams,
                stride: int = 1, shortcut: tuple[Kernel, BatchNormParams] | None = None) -> Image:
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); 3×3 convolutions without bias, padding 1, the stride on
    the first; ``shortcut`` is a 1×1 projection with the same stride, or None for the identity."""
    out = relu(batch_norm(conv2d(x, conv1, stride=stride, padding=1), bn1))
    out = batch_norm(conv2d(out, conv2, padding=1), bn2)
    identity = x if shortcut is None else batch_norm(conv2d(x, shortcut[0], stride=stride), shortcut[1])
    return relu(add(out, identity))


def _bn_from_state(state: Mapping[str, list], prefix: str) -> BatchNormParams:
    return BatchNormParams(state[prefix + "weight"], state[prefix + "bias"], state[prefix + "running_mean"],
                           state[prefix + "running_var"])


def basic_block_from_state(x: Image, state: Mapping[str, list], stride: int = 1) -> Image:
    """``basic_block`` with its weights read from a BasicBlock's state_dict (torch's key names), each value a
    nested list (``tensor.tolist()``); the shortcut is a projection when the dict has ``downsample.0.weight``."""
    shortcut = None
    if "downsample.0.weight" in state:
        shortcut = (state["downsample.0.weight"], _bn_from_state(state, "downsample.1."))
    return basic_block(x, state["conv1.weight"], _bn_from_state(state, "bn1."), state["conv2.weight"],
                       _bn_from_state(state, "bn2."), stride, shortcut)
