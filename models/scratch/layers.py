"""Layer objects of the NumPy networks: parameters + geometry around the functional ops, channels-last inside.

Each layer is built from a state_dict prefix (PyTorch's key names), is called on NHWC arrays
(``models.scratch.layout`` says why), and can tell, from shapes alone, its output shape and how many scratch
elements it allocates per sample — so that ``Network.forward`` can pick a batch chunk that bounds memory
without running anything first. The shape arithmetic is ``models.shapes``, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.scratch.activations import relu
from models.scratch.conv import conv2d_nhwc
from models.scratch.fold import fold_conv_bn
from models.scratch.linear import linear
from models.scratch.norm import BatchNorm
from models.scratch.pooling import avg_pool2d, max_pool2d
from models.scratch.state import StateReader
from models.shapes import conv_output_size, pool_output_size, symmetric_padding

__all__ = [
    "AvgPool2d",
    "Conv2d",
    "Layer",
    "Linear",
    "MaxPool2d",
    "Norm2d",
    "ReLU",
    "Sequential",
    "conv_norm",
]

Shape = tuple[int, int, int]  # one sample, channels last: (H, W, C)


class Layer(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def out_shape(self, shape: Shape) -> Shape: ...

    def scratch(self, shape: Shape) -> int:
        """Elements allocated per sample while running on an input of ``shape`` (output included)."""
        ...


def _numel(shape: Shape) -> int:
    return shape[0] * shape[1] * shape[2]


class ReLU:
    """In place: every array it sees is a fresh intermediate owned by the network."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return relu(x, inplace=True)

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def scratch(self, shape: Shape) -> int:
        return 0


@dataclass
class Conv2d:
    """Convolution with PyTorch's (O, C/groups, kh, kw) weight, run channels-last."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    @classmethod
    def from_state(cls, state: StateReader, prefix: str, stride: int = 1, padding: int | None = None,
                   in_channels: int | None = None) -> Conv2d:
        """``{prefix}weight`` (+ ``bias``); padding defaults to the size-keeping one; groups = C_in / C_w."""
        weight = state.array(prefix + "weight")
        if weight.ndim != 4:
            raise ValueError(f"{prefix}weight should be a 4-D conv weight, got shape {weight.shape}")
        groups = 1
        if in_channels is not None:
            if in_channels % weight.shape[1]:
                raise ValueError(f"{prefix}weight {weight.shape} does not fit {in_channels} input channels")
            groups = in_channels // weight.shape[1]
        pad = symmetric_padding(weight.shape[2]) if padding is None else padding
        return cls(weight, state.optional(prefix + "bias"), stride, pad, 1, groups)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return conv2d_nhwc(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def out_shape(self, shape: Shape) -> Shape:
        k = self.weight.shape[2:]
        return (
            conv_output_size(shape[0], k[0], self.stride, self.padding, self.dilation),
            conv_output_size(shape[1], k[1], self.stride, self.padding, self.dilation),
            self.out_channels,
        )

    def scratch(self, shape: Shape) -> int:
        out = self.out_shape(shape)
        taps = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
        padded = (shape[0] + 2 * self.padding) * (shape[1] + 2 * self.padding) * shape[2]
        return padded + out[0] * out[1] * taps + _numel(out)

    def fold(self, bn: BatchNorm) -> Conv2d:
        """This convolution with the eval-mode ``bn`` that follows it folded in (``models.scratch.fold``)."""
        w, b = fold_conv_bn(self.weight, self.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        return Conv2d(w, b, self.stride, self.padding, self.dilation, self.groups)


class Norm2d:
    """Eval-mode BatchNorm2d on NHWC: one multiply-add per element with the per-channel scale and shift."""

    def __init__(self, bn: BatchNorm) -> None:
        self.bn = bn
        scale, shift = bn.scale_shift()
        self.scale, self.shift = scale.astype(bn.running_mean.dtype), shift.astype(bn.running_mean.dtype)

    @classmethod
    def from_state(cls, state: StateReader, prefix: str, eps: float = 1e-5) -> Norm2d:
        bn = BatchNorm(state.optional(prefix + "weight"), state.optional(prefix + "bias"),
                       state.array(prefix + "running_mean"), state.array(prefix + "running_var"), eps=eps,
                       channel_axis=-1)
        return cls(bn)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x * self.scale
        out += self.shift
        return out

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def scratch(self, shape: Shape) -> int:
        return _numel(shape)


@dataclass
class MaxPool2d:
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode, channels_last=True)

    def out_shape(self, shape: Shape) -> Shape:
        size = [pool_output_size(n, self.kernel, self.stride, self.padding, 1, self.ceil_mode) for n in shape[:2]]
        return size[0], size[1], shape[2]

    def scratch(self, shape: Shape) -> int:
        # The padded copy (plus at most one stride of ceil_mode overhang per side) and the output.
        padded = (shape[0] + 2 * self.padding + self.stride) * (shape[1] + 2 * self.padding + self.stride)
        return padded * shape[2] + _numel(self.out_shape(shape))


@dataclass
class AvgPool2d(MaxPool2d):
    count_include_pad: bool = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return avg_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode,
                          count_include_pad=self.count_include_pad, channels_last=True)


@dataclass
class Linear:
    weight: np.ndarray
    bias: np.ndarray | None

    @classmethod
    def from_state(cls, state: StateReader, prefix: str) -> Linear:
        weight = state.array(prefix + "weight")
        if weight.ndim != 2:
            raise ValueError(f"{prefix}weight should be a 2-D linear weight, got shape {weight.shape}")
        return cls(weight, state.optional(prefix + "bias"))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return linear(x, self.weight, self.bias)


@dataclass
class Sequential:
    """Layers applied in order (shapes and scratch composed the same way)."""

    layers: list[Layer] = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def out_shape(self, shape: Shape) -> Shape:
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

    def scratch(self, shape: Shape) -> int:
        peak = 0
        for layer in self.layers:
            # The input of a layer stays alive while it runs.
            peak = max(peak, _numel(shape) + layer.scratch(shape))
            shape = layer.out_shape(shape)
        return peak


def conv_norm(state: StateReader, conv: str, norm: str | None, *, stride: int = 1, in_channels: int,
              fold_bn: bool = False, padding: int | None = None) -> Sequential:
    """Conv (``{conv}weight``) → BatchNorm (``{norm}…``, absent when ``norm`` is None): as two layers, or one
    convolution with the BN folded in."""
    layer = Conv2d.from_state(state, conv, stride=stride, padding=padding, in_channels=in_channels)
    if norm is None:
        return Sequential([layer])
    bn = Norm2d.from_state(state, norm)
    if bn.scale.shape != (layer.out_channels,):
        raise ValueError(f"{norm} has {bn.scale.shape[0]} channels, {conv}weight has {layer.out_channels}")
    if fold_bn:
        return Sequential([layer.fold(bn.bn)])
    return Sequential([layer, bn])


def channels_of(layers: Sequence[Layer], default: int) -> int:
    """Output channels of the last convolution in ``layers`` (``default`` if there is none)."""
    for layer in reversed(layers):
        if isinstance(layer, Conv2d):
            return layer.out_channels
        if isinstance(layer, Sequential):
            inner = channels_of(layer.layers, -1)
            if inner != -1:
                return inner
    return default
