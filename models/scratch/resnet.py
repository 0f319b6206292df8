"""The whole ResNet forward in NumPy, built from a PyTorch state_dict by key.

Reproduces ``models.resnet.ResNet`` (every depth, the plain twins, ``norm=False``) and torchvision's
resnet18/34/50 (same module names), in eval mode:

    stem:   ImageNet  conv 7×7/2 → BN → ReLU → max-pool 3×3/2        CIFAR  conv 3×3/1 → BN → ReLU
    stages: layer1 … layerK of Basic/Bottleneck blocks; the first block of every stage but the first has stride 2
    head:   global average pool → fc, or fastai's create_head (``models.scratch.heads``)

Nothing about the geometry is stored in a state_dict, so stems and strides come from ``models.archs`` (the
table the PyTorch model is built from), paddings from ``models.shapes``, and the widths, groups and class count
from the weights' shapes. He et al. 2015, "Deep Residual Learning for Image Recognition"; torchvision
``models/resnet.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.archs import STEMS, stage_stride
from models.scratch.blocks import BasicBlock, Bottleneck
from models.scratch.heads import read_head
from models.scratch.layers import Layer, MaxPool2d, ReLU, Sequential, channels_of, conv_norm
from models.scratch.network import Network
from models.scratch.state import StateReader

__all__ = ["ResNetNumpy"]

_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetNumpy(Network):
    """models.resnet.ResNet / torchvision ResNet, eval mode, in NumPy."""

    @classmethod
    def from_state_dict(cls, config: Mapping[str, Any], state_dict: Mapping[str, Any], *,
                        dtype: type = np.float32, fold_bn: bool = False) -> ResNetNumpy:
        """Build from ``config`` (``models.resnet.ResNet.config``, or checkpoint kwargs merged with the arch's
        block/layers/stem/skip) and a state_dict of arrays or tensors.

        ``fold_bn`` folds every BatchNorm into its convolution first (faster; the unfolded form is the more
        independent reference).
        """
        for key in ("block", "layers"):
            if key not in config:
                raise ValueError(f"config needs {key!r} (got keys {sorted(config)})")
        if config.get("replace_stride_with_dilation") or config.get("norm_layer") is not None:
            raise NotImplementedError("dilated stages and custom norm layers are not supported by the NumPy ResNet")
        fastai_head = config.get("head", "linear") == "fastai"  # then the network's own pooling is cut off
        if not fastai_head and (config.get("pool", "avg") != "avg" or config.get("pool_size", 1) != 1):
            # Refuse rather than silently compute global average pooling for another head.
            raise NotImplementedError(f"the NumPy ResNet implements the global-average-pool head only, got "
                                      f"pool={config.get('pool')!r}, pool_size={config.get('pool_size')}")
        block_name, stem = config["block"], config.get("stem", "imagenet")
        if block_name not in _BLOCKS or stem not in STEMS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)} and stem one of {sorted(STEMS)}, "
                             f"got {block_name!r}, {stem!r}")
        norm, skip = bool(config.get("norm", True)), bool(config.get("skip", True))
        state = StateReader(state_dict, dtype)
        in_chans = state.shape("conv1.weight")[1]
        if config.get("in_chans", in_chans) != in_chans:
            raise ValueError(f"config says in_chans={config['in_chans']}, conv1.weight takes {in_chans}")

        stem_spec = STEMS[stem]
        kernel = stem_spec.kernel
        if state.shape("conv1.weight")[2:] != (kernel, kernel):
            raise ValueError(f"a {stem} stem has a {kernel}×{kernel} conv1, the state_dict's is "
                             f"{state.shape('conv1.weight')[2:]}")
        layers: list[Layer] = [*conv_norm(state, "conv1.", "bn1." if norm else None, stride=stem_spec.stride,
                                          in_channels=in_chans, fold_bn=fold_bn).layers, ReLU()]
        if stem_spec.pool:
            layers.append(MaxPool2d(*stem_spec.pool))
        channels = channels_of(layers, in_chans)

        block_cls = _BLOCKS[block_name]
        for i, depth in enumerate(config["layers"]):
            for j in range(depth):
                block = block_cls.from_state(
                    state, f"layer{i + 1}.{j}.", stride=stage_stride(i) if j == 0 else 1, in_channels=channels,
                    norm=norm, skip=skip, fold_bn=fold_bn,
                )
                layers.append(block)
                channels = block.out_channels

        head = read_head(state, config, channels, "fc.", fold_bn)
        state.check_all_used()
        return cls(Sequential(layers), head, {**config, "in_chans": in_chans}, dtype)
