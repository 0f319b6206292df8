"""Every architecture the project knows, as plain data: the one table the PyTorch models, the NumPy reference
and the registry all read.

Three families share the names:
- the project's own ResNets (``models.resnet``): resnet18/34/50, the CIFAR resnet20/32/56, and their ``plain``
  twins (same layers, no shortcuts);
- fastai's xresnet18/34/50 (He et al. 2019, "Bag of Tricks"), built by fastai;
- torchvision's resnet18/34/50 as ``tv_resnet18`` …, whose module names (and so state_dict keys) are the
  project's, so they share its specs.

Nothing here imports torch or NumPy, so ``models.scratch`` and tools that never build a model can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARCHS",
    "EXPANSION",
    "HEADS",
    "RESNET_SPECS",
    "STEMS",
    "TORCHVISION_SPECS",
    "XRESNET_SPECS",
    "ResNetSpec",
    "Stem",
    "XResNetSpec",
    "body_children",
    "downsampling",
    "family",
    "spec",
    "stage_stride",
    "to_named_keys",
]


@dataclass(frozen=True)
class Stem:
    """conv1 (kernel×kernel, stride) → BN → ReLU → optional max-pool, and the default width of each stage."""

    kernel: int
    stride: int
    pool: tuple[int, int, int] | None  # max-pool (kernel, stride, padding), or None for no pool
    widths: tuple[int, ...]


STEMS: dict[str, Stem] = {
    "imagenet": Stem(kernel=7, stride=2, pool=(3, 2, 1), widths=(64, 128, 256, 512)),
    # CIFAR-style (He et al. 2015, §4.2): no pooling, three stages at 16/32/64 filters.
    "cifar": Stem(kernel=3, stride=1, pool=None, widths=(16, 32, 64)),
}

# Output channels of a block per unit of its width: Basic 3×3 → 3×3, Bottleneck 1×1 → 3×3 → 1×1 (×4).
EXPANSION: dict[str, int] = {"basic": 1, "bottleneck": 4}


def stage_stride(stage: int) -> int:
    """Stride of the first block of stage ``stage`` (0-based): every stage but the first halves the size."""
    return 1 if stage == 0 else 2


@dataclass(frozen=True)
class ResNetSpec:
    """What an arch name fixes of ``models.resnet.ResNet``: block type, blocks per stage, stem, shortcuts."""

    block: str
    layers: tuple[int, ...]
    stem: str
    skip: bool = True

    def config(self) -> dict[str, Any]:
        """The ``ResNet`` constructor arguments (as in ``ResNet.config``)."""
        return {"block": self.block, "layers": list(self.layers), "stem": self.stem, "skip": self.skip}


@dataclass(frozen=True)
class XResNetSpec:
    """What an arch name fixes of fastai's XResNet: block expansion and blocks per stage."""

    expansion: int
    layers: tuple[int, ...]

    def config(self) -> dict[str, Any]:
        return {"expansion": self.expansion, "layers": list(self.layers)}


RESNET_SPECS: dict[str, ResNetSpec] = {}
for _skip, _prefix in ((True, "resnet"), (False, "plain")):
    RESNET_SPECS.update({
        f"{_prefix}18": ResNetSpec("basic", (2, 2, 2, 2), "imagenet", _skip),
        f"{_prefix}34": ResNetSpec("basic", (3, 4, 6, 3), "imagenet", _skip),
        f"{_prefix}50": ResNetSpec("bottleneck", (3, 4, 6, 3), "imagenet", _skip),
        # CIFAR-style: depth 6n+2, three stages of n basic blocks.
        f"{_prefix}20": ResNetSpec("basic", (3, 3, 3), "cifar", _skip),
        f"{_prefix}32": ResNetSpec("basic", (5, 5, 5), "cifar", _skip),
        f"{_prefix}56": ResNetSpec("basic", (9, 9, 9), "cifar", _skip),
    })

XRESNET_SPECS: dict[str, XResNetSpec] = {
    "xresnet18": XResNetSpec(expansion=1, layers=(2, 2, 2, 2)),
    "xresnet34": XResNetSpec(expansion=1, layers=(3, 4, 6, 3)),
    "xresnet50": XResNetSpec(expansion=4, layers=(3, 4, 6, 3)),
}

TORCHVISION_SPECS: dict[str, ResNetSpec] = {
    f"tv_{name}": RESNET_SPECS[name] for name in ("resnet18", "resnet34", "resnet50")
}

ARCHS: tuple[str, ...] = (*RESNET_SPECS, *XRESNET_SPECS, *TORCHVISION_SPECS)

_FAMILIES: dict[str, dict[str, Any]] = {
    "project": RESNET_SPECS,
    "xresnet": XRESNET_SPECS,
    "torchvision": TORCHVISION_SPECS,
}


def family(arch: str) -> str:
    """'project', 'xresnet' or 'torchvision'; ValueError naming every arch for an unknown one."""
    for name, table in _FAMILIES.items():
        if arch in table:
            return name
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def spec(arch: str) -> ResNetSpec | XResNetSpec:
    """The table entry of ``arch`` (ValueError for an unknown name, as ``family``)."""
    return _FAMILIES[family(arch)][arch]


def downsampling(arch: str) -> int:
    """Total stride of the network's body: the smallest input side that still leaves a 1×1 feature map."""
    s = spec(arch)
    if isinstance(s, XResNetSpec):  # fastai's stem: stride 2, then a stride-2 max-pool
        stem_stride = 2 * 2
    else:
        stem = STEMS[s.stem]
        stem_stride = stem.stride * (stem.pool[1] if stem.pool else 1)
    return stem_stride * math.prod(stage_stride(i) for i in range(len(s.layers)))


# ---- body and head -------------------------------------------------------------------------------------------------

# "linear": the network's own head, global average pool → one Linear (``fc``); "fastai": fastai's ``create_head``
# on the body (``vision_learner``'s model, ``nn.Sequential(body, head)``).
HEADS: tuple[str, ...] = ("linear", "fastai")


def body_children(arch: str, n_stem: int = 3) -> tuple[str, ...]:
    """Names of the network's children that make its body, in order (fastai's ``cut``: everything before the
    pooling head). The project's ResNets and torchvision's name them; fastai's XResNet is an ``nn.Sequential``
    (``n_stem`` ConvLayers, the max-pool, one child per stage)."""
    s = spec(arch)
    if isinstance(s, XResNetSpec):
        return tuple(str(i) for i in range(n_stem + 1 + len(s.layers)))
    return ("conv1", "bn1", "relu", "maxpool", *(f"layer{i + 1}" for i in range(len(s.layers))))


def to_named_keys(state_dict: dict[str, Any], arch: str, n_stem: int = 3) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a fastai-head state_dict (``0.<i>.…`` body, ``1.…`` head) into the body under the network's own
    names (``0.4.0.conv1.weight`` → ``layer1.0.conv1.weight``) and the head (``1.2.weight`` → ``2.weight``)."""
    names = body_children(arch, n_stem)
    body: dict[str, Any] = {}
    head: dict[str, Any] = {}
    for key, value in state_dict.items():
        part, _, rest = key.partition(".")
        if part == "1":
            head[rest] = value
            continue
        index, _, leaf = rest.partition(".")
        if part != "0" or not index.isdigit() or int(index) >= len(names):
            raise ValueError(f"state_dict key {key!r} is not in a fastai body + head model of {arch}")
        body[f"{names[int(index)]}.{leaf}"] = value
    return body, head
