"""fastai's XResNet in NumPy, built from its state_dict by key (eval mode).

XResNet (He et al. 2019, "Bag of Tricks for Image Classification with Convolutional Neural Networks", §4.2, the
"ResNet-D" tweaks) is an ``nn.Sequential``, so its keys are positions:

    0 … S−1   stem: S ConvLayers (conv k×k → BN → ReLU; the first with stride 2), S = len(stem_szs) = 3
    S         max-pool k×k/2, padding k//2
    S+1 …     one Sequential of ResBlocks per stage; the first block of every stage but the first has stride 2
    then      adaptive average pool → flatten → dropout (identity in eval) → Linear

A ResBlock is ``act(convpath(x) + idpath(x))``: convpath is 2 ConvLayers (k, k; expansion 1) or 3 (1, k, 1;
expansion 4) with the stride on the k×k and no activation after the last; idpath is [AvgPool2d(2, ceil_mode=True)
when the stride is 2] then [1×1 ConvLayer when the width changes] — the pooled, unstrided 1×1 shortcut is the
"ResNet-D" trick. Keys ``{stage}.{block}.convpath.{i}.0`` (conv) / ``.1`` (BN), ``idpath.{0|1}.0`` / ``.1``.
fastai ``vision/models/xresnet.py`` and ``layers.py`` (``ConvLayer``, ``ResBlock``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.scratch.blocks import BasicBlock, Bottleneck, ResidualBlock, conv_path
from models.scratch.heads import read_head
from models.scratch.layers import AvgPool2d, Layer, MaxPool2d, ReLU, Sequential, channels_of, conv_norm
from models.scratch.network import Network
from models.scratch.state import StateReader

__all__ = ["XResNetNumpy"]

# Keyword arguments of fastai's XResNet this reference understands; anything else (sa, act_cls, ndim, SE blocks…)
# changes the computation in ways the keys do not show.
_SUPPORTED_KWARGS = {"num_classes", "in_chans", "n_out", "c_in", "p", "stem_szs", "widen", "ks", "stride",
                     "expansion", "layers", "arch", "head"}


def _conv_layer(state: StateReader, prefix: str, *, stride: int, in_channels: int, act: bool, fold_bn: bool,
                ) -> list[Layer]:
    """fastai ConvLayer: conv (padding (k−1)//2) → BN → [ReLU]."""
    layers = conv_norm(state, prefix + "0.", prefix + "1.", stride=stride, in_channels=in_channels,
                       fold_bn=fold_bn).layers
    return [*layers, ReLU()] if act else list(layers)


def _res_block(state: StateReader, prefix: str, *, expansion: int, stride: int, in_channels: int,
               fold_bn: bool) -> ResidualBlock:
    # fastai's convpath has the branch of the torchvision blocks: expansion 1 the basic one, else the bottleneck.
    like = BasicBlock if expansion == 1 else Bottleneck
    keys = [(f"{prefix}convpath.{i}.0.", f"{prefix}convpath.{i}.1.") for i in range(like.convs)]
    path = conv_path(state, keys, stride=stride, strided=like.strided, in_channels=in_channels, fold_bn=fold_bn)
    channels = channels_of(path.layers, in_channels)
    shortcut: list[Layer] = []
    if stride != 1:
        shortcut.append(AvgPool2d(kernel=stride, stride=stride, padding=0, ceil_mode=True))
    conv_at = f"{prefix}idpath.{len(shortcut)}."
    if conv_at + "0.weight" in state:
        shortcut += _conv_layer(state, conv_at, stride=1, in_channels=in_channels, act=False, fold_bn=fold_bn)
    elif channels != in_channels:
        raise ValueError(f"block {prefix!r} changes the width ({in_channels} → {channels}) but the state_dict has "
                         f"no {conv_at}0.weight")
    return ResidualBlock(path, Sequential(shortcut) if shortcut else None)


class XResNetNumpy(Network):
    """fastai xresnet18/34/50, eval mode, in NumPy."""

    @classmethod
    def from_state_dict(cls, config: Mapping[str, Any], state_dict: Mapping[str, Any], *,
                        dtype: type = np.float32, fold_bn: bool = False) -> XResNetNumpy:
        """``config`` holds ``expansion`` and ``layers`` (``models.archs.XRESNET_SPECS``) and the
        checkpoint kwargs; ``stem_szs``, ``ks`` and ``stride`` follow fastai's defaults when absent."""
        unknown = sorted(set(config) - _SUPPORTED_KWARGS)
        if unknown:
            raise NotImplementedError(f"xresnet options {unknown} are not supported by the NumPy reference "
                                      f"(supported: {sorted(_SUPPORTED_KWARGS - {'arch'})})")
        if "expansion" not in config or "layers" not in config:
            raise ValueError(f"config needs 'expansion' and 'layers' (got keys {sorted(config)})")
        expansion, stages = int(config["expansion"]), list(config["layers"])
        ks, stride = int(config.get("ks", 3)), int(config.get("stride", 2))
        n_stem = len(config.get("stem_szs", (32, 32, 64)))
        state = StateReader(state_dict, dtype)
        in_chans = state.shape("0.0.weight")[1]
        if config.get("in_chans", config.get("c_in", in_chans)) != in_chans:
            raise ValueError(f"config says in_chans={config.get('in_chans', config.get('c_in'))}, "
                             f"0.0.weight takes {in_chans}")

        layers: list[Layer] = []
        channels = in_chans
        for i in range(n_stem):
            layers += _conv_layer(state, f"{i}.", stride=stride if i == 0 else 1, in_channels=channels, act=True,
                                  fold_bn=fold_bn)
            channels = channels_of(layers, channels)
        layers.append(MaxPool2d(kernel=ks, stride=stride, padding=ks // 2))
        first_stage = n_stem + 1
        for s, depth in enumerate(stages):
            for b in range(depth):
                block = _res_block(state, f"{first_stage + s}.{b}.", expansion=expansion,
                                   stride=stride if s > 0 and b == 0 else 1, in_channels=channels, fold_bn=fold_bn)
                layers.append(block)
                channels = block.out_channels

        # Adaptive pool, flatten and dropout hold no weights; the Linear is three positions after the last stage.
        head = read_head(state, config, channels, f"{first_stage + len(stages) + 3}.", fold_bn)
        state.check_all_used()
        return cls(Sequential(layers), head, {**config, "in_chans": in_chans}, dtype)
