"""The project's ResNet in PyTorch (He et al. 2015, "Deep Residual Learning for Image Recognition").

Two block types feed one network class:

- ``BasicBlock``: 3×3 → BN → ReLU → 3×3 → BN, plus the shortcut, then ReLU (ResNet-18/34 and the CIFAR nets);
- ``Bottleneck``: 1×1 reduce → 3×3 → 1×1 expand (×4), plus the shortcut, then ReLU (ResNet-50).

The shortcut is the identity, or a 1×1 convolution + BN ("projection", option B in the paper) where the stride or
the width changes. ``skip=False`` builds the *plain* twin (same layers, no shortcut at all), which is what the
paper compares against to show the degradation problem. ``norm=False`` replaces every BatchNorm with an identity
(convolutions then get a bias) for the BatchNorm experiment.

The head pools the last feature map to ``pool_size``×``pool_size`` (``pool="avg"`` or ``"max"``), flattens it and
applies ``fc``. The default, average pooling to 1×1, is the paper's global average pooling; ``pool_size`` equal to
the feature map's side makes the pooling an identity, i.e. the classic "flatten → fully connected" head (the
pooling experiment compares these).

Module names follow torchvision (``conv1``, ``bn1``, ``layer2.0.downsample.0``, ``fc``): they *are* the
state_dict keys, so torchvision checkpoints, the NumPy reference and the BatchNorm folder all read the same dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.archs import EXPANSION, RESNET_SPECS, STEMS, stage_stride
from models.shapes import symmetric_padding

__all__ = [
    "ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "build",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution that keeps the size at stride 1."""
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=symmetric_padding(3, dilation), dilation=dilation, bias=bias
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=bias)


def _norm(planes: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(planes) if norm else nn.Identity()


class _ResidualBlock(nn.Module):
    """What both blocks share: the constructor, and relu(branch(x) + shortcut(x)); a plain block
    (``skip=False``) adds nothing."""

    expansion: int

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
        skip: bool = True, norm: bool = True,
    ) -> None:
        super().__init__()
        self._branch_layers(inplanes, planes, stride, norm)
        # Registered after the branch's layers, so that the state_dict keys come in torchvision's order.
        self.downsample, self.skip, self.stride = downsample, skip, stride

    def _branch_layers(self, inplanes: int, planes: int, stride: int, norm: bool) -> None:
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.skip:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class BasicBlock(_ResidualBlock):
    expansion = EXPANSION["basic"]

    def _branch_layers(self, inplanes: int, planes: int, stride: int, norm: bool) -> None:
        self.conv1 = conv3x3(inplanes, planes, stride, bias=not norm)
        self.bn1 = _norm(planes, norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, bias=not norm)
        self.bn2 = _norm(planes, norm)

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    expansion = EXPANSION["bottleneck"]

    def _branch_layers(self, inplanes: int, planes: int, stride: int, norm: bool) -> None:
        # The stride sits on the 3×3 convolution (ResNet v1.5, as torchvision does).
        self.conv1 = conv1x1(inplanes, planes, bias=not norm)
        self.bn1 = _norm(planes, norm)
        self.conv2 = conv3x3(planes, planes, stride, bias=not norm)
        self.bn2 = _norm(planes, norm)
        self.conv3 = conv1x1(planes, planes * self.expansion, bias=not norm)
        self.bn3 = _norm(planes * self.expansion, norm)
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


Block = type[BasicBlock] | type[Bottleneck]
BLOCKS: dict[str, Block] = {"basic": BasicBlock, "bottleneck": Bottleneck}
POOLS = ("avg", "max")


class ResNet(nn.Module):
    """ResNet with an ImageNet stem (7×7/2 + max-pool, four stages) or a CIFAR stem (3×3/1, three stages).

    The constructor arguments are plain values, so ``model.config`` can be stored beside the weights and the
    same network rebuilt with ``ResNet(**config)``.
    """

    def __init__(
        self,
        block: str,
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        widths: list[int] | None = None,
        skip: bool = True,
        norm: bool = True,
        zero_init_residual: bool = False,
        pool: str = "avg",
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {tuple(STEMS)}, got {stem!r}")
        stem_spec = STEMS[stem]
        if widths is None:
            widths = list(stem_spec.widths)
        if len(widths) != len(layers) or not layers or min(layers) < 1:
            raise ValueError(f"need one width per stage and >= 1 block per stage, got layers={layers} widths={widths}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.config: dict[str, Any] = dict(
            block=block, layers=list(layers), num_classes=num_classes, in_chans=in_chans, stem=stem,
            widths=list(widths), skip=skip, norm=norm, zero_init_residual=zero_init_residual,
            pool=pool, pool_size=pool_size,
        )
        block_cls = BLOCKS[block]
        self.skip, self.norm = skip, norm
        self.inplanes = widths[0]

        # Registration order = forward order (conv1, bn1, relu, maxpool), as in torchvision, so that
        # nn.Sequential(*model.children()) and fastai's create_body rebuild the same network.
        k = stem_spec.kernel
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, k, stride=stem_spec.stride, padding=symmetric_padding(k),
                               bias=not norm)
        self.bn1 = _norm(self.inplanes, norm)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(*stem_spec.pool) if stem_spec.pool else nn.Identity()

        self.stages: list[str] = []
        for i, (width, depth) in enumerate(zip(widths, layers, strict=True)):
            name = f"layer{i + 1}"
            setattr(self, name, self._make_layer(block_cls, width, depth, stride=stage_stride(i)))
            self.stages.append(name)
        # Named ``avgpool`` whatever the pooling: torchvision's name, which the summary walker looks for.
        self.avgpool: nn.Module = (nn.AdaptiveAvgPool2d if pool == "avg" else nn.AdaptiveMaxPool2d)(
            (pool_size, pool_size))
        self.fc = nn.Linear(widths[-1] * block_cls.expansion * pool_size * pool_size, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual and norm:
            # Each residual branch starts as zero, so every block starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, _ResidualBlock):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out_planes = planes * block.expansion
        if self.skip and (stride != 1 or self.inplanes != out_planes):
            downsample = nn.Sequential(
                conv1x1(self.inplanes, out_planes, stride, bias=not self.norm), _norm(out_planes, self.norm)
            )
        layers = [block(self.inplanes, planes, stride, downsample, skip=self.skip, norm=self.norm)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, skip=self.skip, norm=self.norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


ARCHS: tuple[str, ...] = tuple(RESNET_SPECS)


def build(arch: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """Build one of ``ARCHS`` (resnet18/34/50, resnet20/32/56 and their ``plain`` twins; see ``models.archs``)."""
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ResNet(**RESNET_SPECS[arch].config(), num_classes=num_classes, in_chans=in_chans, **kwargs)
