"""The two residual blocks of He et al. 2015 ("Deep Residual Learning for Image Recognition", §3–4, Fig. 2 and 5).

- ``BasicBlock`` (ResNet-18/34 and the CIFAR nets): 3×3 conv → BN → ReLU → 3×3 conv → BN, plus the shortcut, ReLU.
- ``Bottleneck`` (ResNet-50): 1×1 reduce → BN → ReLU → 3×3 → BN → ReLU → 1×1 expand (×4) → BN, plus the shortcut,
  ReLU. The stride sits on the 3×3 convolution ("ResNet v1.5", as torchvision and models/resnet.py do).

The shortcut is the identity, or a *projection* (1×1 conv with the block's stride → BN; option B of the paper)
where the stride or the width changes; a *plain* block (``skip=False``) has no shortcut at all. Keys are read
with torchvision's names (``conv1``, ``bn1``, ``downsample.0``, ``downsample.1``), which models/resnet.py shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from models.archs import EXPANSION
from models.scratch.layers import Layer, ReLU, Sequential, Shape, channels_of, conv_norm
from models.scratch.state import StateReader

__all__ = ["BasicBlock", "Bottleneck", "ResidualBlock", "conv_path"]


class ResidualBlock:
    """relu(path(x) + shortcut(x)); the shortcut is the identity when None, absent when ``skip`` is False."""

    def __init__(self, path: Sequential, shortcut: Sequential | None, skip: bool = True) -> None:
        self.path, self.shortcut, self.skip = path, shortcut, skip
        self.relu = ReLU()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.path(x)
        if self.skip:
            identity = x if self.shortcut is None else self.shortcut(x)
            if identity.shape != out.shape:
                raise ValueError(f"residual shapes differ: path {out.shape}, shortcut {identity.shape}")
            out += identity
        return self.relu(out)

    def out_shape(self, shape: Shape) -> Shape:
        return self.path.out_shape(shape)

    def scratch(self, shape: Shape) -> int:
        side = self.shortcut.scratch(shape) if self.shortcut is not None and self.skip else 0
        return max(self.path.scratch(shape), side) + self.path.scratch(shape) // 4

    @property
    def out_channels(self) -> int:
        return channels_of(self.path.layers, -1)


def conv_path(state: StateReader, keys: Sequence[tuple[str, str | None]], *, stride: int, strided: int,
              in_channels: int, fold_bn: bool) -> Sequential:
    """A residual branch: conv → BN pairs (``keys``: conv prefix, BN prefix or None) with a ReLU between two
    pairs and none after the last; pair ``strided`` (0-based) carries the block's stride.

    Each convolution is told its input width, so it reads its groups from the weight (torchvision's ResNeXt).
    """
    layers: list[Layer] = []
    channels = in_channels
    for i, (conv, norm) in enumerate(keys):
        if layers:
            layers.append(ReLU())
        layers += conv_norm(state, conv, norm, stride=stride if i == strided else 1, in_channels=channels,
                            fold_bn=fold_bn).layers
        channels = channels_of(layers, channels)
    return Sequential(layers)


def _projection(state: StateReader, prefix: str, path: Sequential, *, stride: int, in_channels: int, norm: bool,
                skip: bool, fold_bn: bool) -> Sequential | None:
    if not skip:
        return None
    if prefix + "downsample.0.weight" not in state:
        out_channels = channels_of(path.layers, -1)
        if stride != 1 or out_channels != in_channels:
            raise ValueError(f"block {prefix!r} changes the shape (stride {stride}, {in_channels} → {out_channels} "
                             f"channels) but the state_dict has no {prefix}downsample.0.weight")
        return None
    return conv_norm(state, prefix + "downsample.0.", prefix + "downsample.1." if norm else None, stride=stride,
                     in_channels=in_channels, fold_bn=fold_bn, padding=0)


class _TorchvisionBlock(ResidualBlock):
    """A block read by torchvision's key names: ``conv1``/``bn1`` … ``conv{convs}``/``bn{convs}``."""

    expansion: int
    convs: int  # how many conv → BN pairs the branch has
    strided: int  # which of them (0-based) carries the block's stride

    @classmethod
    def from_state(cls, state: StateReader, prefix: str, *, stride: int, in_channels: int, norm: bool = True,
                   skip: bool = True, fold_bn: bool = False) -> Self:
        keys = [(f"{prefix}conv{i}.", f"{prefix}bn{i}." if norm else None) for i in range(1, cls.convs + 1)]
        path = conv_path(state, keys, stride=stride, strided=cls.strided, in_channels=in_channels, fold_bn=fold_bn)
        shortcut = _projection(state, prefix, path, stride=stride, in_channels=in_channels, norm=norm, skip=skip,
                               fold_bn=fold_bn)
        return cls(path, shortcut, skip)


class BasicBlock(_TorchvisionBlock):
    expansion = EXPANSION["basic"]
    convs, strided = 2, 0


class Bottleneck(_TorchvisionBlock):
    expansion = EXPANSION["bottleneck"]
    convs, strided = 3, 1  # the stride on the 3×3 (ResNet v1.5)
