"""The classic CNNs as specs, torch-free: LeNet-5, AlexNet, VGG-16/19, GoogLeNet and one Inception block,
ResNet-18/34/50/101/152, and an MLP on the same input (the "why a CNN" comparison).

Each is written with the layers of ``models.spec`` and sized by its walker (sizes from ``models.shapes``), under
torchvision's module names where torchvision has the network, so that tests/models/test_classic.py compares them
layer by layer with torchvision's models (equal parameters and MACs). Where a spec is not the paper's network:
- ``lenet5`` (LeCun et al. 1998): C3 sees all six S2 maps (the paper's connection table gives it 1,516 weights
  instead of 2,416), S2/S4 are plain average pooling (the paper's have a trainable weight and bias per map), and
  the output layer is linear (the paper's is 84×10 Euclidean RBF units);
- ``alexnet`` is torchvision's one-GPU version (Krizhevsky 2014, "One weird trick…": 64-192-384-256-256 filters,
  no LRN); ``alexnet2012`` is the paper's (Krizhevsky et al. 2012: 96-256-384-384-256 filters, conv2/4/5 split over
  two GPUs as two groups, local response normalisation) on its effective 227×227 input;
- ``googlenet`` is torchvision's (BatchNorm after every convolution, 3×3 where the paper's fourth branch has 5×5,
  no auxiliary classifiers); ``inception3a`` is the paper's block (Szegedy et al. 2015, Table 1: 5×5, biases, no
  BatchNorm) on its 192×28×28 input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from models.archs import EXPANSION, RESNET_SPECS, STEMS, stage_stride
from models.shapes import symmetric_padding
from models.spec import (
    FLATTEN_FN,
    RELU,
    AdaptivePool,
    Concat,
    Conv,
    Flatten,
    Layer,
    Linear,
    Norm,
    Pool,
    Residual,
    Same,
    Seq,
    Summary,
    fastai_head,
    linear_head,
    seq,
    walk,
)

__all__ = ["CLASSICS", "HEADS", "Classic", "check_head", "comparison", "comparison_markdown", "parts", "summarize"]

# The classifiers --head can put on a body: global average pooling → linear, or fastai's create_head.
HEADS = ("linear", "fastai")
DROPOUT = Same("Dropout")
TANH = Same("Tanh")


@dataclass(frozen=True)
class Classic:
    """One architecture: the body (features), its own classifier for K classes (None for a lone block)."""

    title: str
    input: tuple[int, int, int]  # the paper's input
    body: Seq
    head: Callable[[int], Seq] | None
    torchvision: str | None = None  # the torchvision.models builder with these layers
    classes: int = 1000  # the paper's


def indexed(*layers: Layer) -> Seq:
    """Layers named 0, 1, 2 … as in an ``nn.Sequential``."""
    return Seq(tuple((str(i), layer) for i, layer in enumerate(layers)))


# ------------------------------------------------------------------------------------------------ LeNet, AlexNet


LENET5_BODY = seq(("c1", Conv(6, 5)), ("tanh1", TANH), ("s2", Pool(2, type="AvgPool2d")),
                  ("c3", Conv(16, 5)), ("tanh3", TANH), ("s4", Pool(2, type="AvgPool2d")),
                  ("c5", Conv(120, 5)), ("tanh5", TANH))


def _lenet5_head(k: int) -> Seq:
    return seq(("flatten", Flatten()), ("f6", Linear(84)), ("tanh6", TANH), ("output", Linear(k)))


def _mlp_head(k: int) -> Seq:
    """VGG's classifier (4096 → 4096 → K) put straight on the pixels."""
    return seq(("flatten", Flatten()), ("fc1", Linear(4096)), ("relu1", RELU), ("fc2", Linear(4096)),
               ("relu2", RELU), ("fc3", Linear(k)))


def _alexnet_head(k: int, pool: bool = True) -> Seq:
    """torchvision's AlexNet classifier (dropout before each of the first two linear layers)."""
    classifier = indexed(DROPOUT, Linear(4096), RELU, DROPOUT, Linear(4096), RELU, Linear(k))
    front = (("avgpool", AdaptivePool(6)),) if pool else ()
    return Seq((*front, ("flatten", FLATTEN_FN), ("classifier", classifier)))


def _conv_relu(*convs: Conv | Pool | Same) -> Seq:
    """A ReLU after every convolution (``nn.Sequential`` numbering)."""
    layers: list[Layer] = []
    for c in convs:
        layers += [c, RELU] if isinstance(c, Conv) else [c]
    return indexed(*layers)


ALEXNET_BODY = seq(("features", _conv_relu(
    Conv(64, 11, 4, 2), Pool(3, 2), Conv(192, 5, padding=2), Pool(3, 2), Conv(384, 3, padding=1),
    Conv(256, 3, padding=1), Conv(256, 3, padding=1), Pool(3, 2))))

LRN = Same("LocalResponseNorm")
ALEXNET2012_BODY = seq(("features", _conv_relu(
    Conv(96, 11, 4), LRN, Pool(3, 2), Conv(256, 5, padding=2, groups=2), LRN, Pool(3, 2),
    Conv(384, 3, padding=1), Conv(384, 3, padding=1, groups=2), Conv(256, 3, padding=1, groups=2), Pool(3, 2))))


# ------------------------------------------------------------------------------------------------ VGG


VGG_CONFIGS = {  # Simonyan & Zisserman 2015, Table 1: D (16 weight layers) and E (19); "M" is a 2×2 max-pool
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def _vgg_body(config: tuple[int | str, ...]) -> Seq:
    return seq(("features", _conv_relu(*(Pool(2, 2) if v == "M" else Conv(int(v), 3, padding=1) for v in config))))


def _vgg_head(k: int) -> Seq:
    classifier = indexed(Linear(4096), RELU, DROPOUT, Linear(4096), RELU, DROPOUT, Linear(k))
    return seq(("avgpool", AdaptivePool(7)), ("flatten", FLATTEN_FN), ("classifier", classifier))


# ------------------------------------------------------------------------------------------------ GoogLeNet


def _bn_conv(out: int, kernel: int, stride: int = 1, padding: int = 0) -> Seq:
    """torchvision's BasicConv2d: conv (no bias) → BN → ReLU (functional)."""
    return seq(("conv", Conv(out, kernel, stride, padding, bias=False)), ("bn", Norm()),
               ("relu", Same("relu", module=False)))


def _plain_conv(out: int, kernel: int, stride: int = 1, padding: int = 0) -> Seq:
    """The paper's convolution: with a bias, then ReLU; no BatchNorm (2015 predates its use here)."""
    return seq(("conv", Conv(out, kernel, stride, padding)), ("relu", RELU))


def inception(c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int,
              conv: Callable[..., Seq] = _bn_conv, k5: int = 3) -> Concat:
    """Four branches concatenated: 1×1 | 1×1 → 3×3 | 1×1 → k5×k5 | 3×3 max-pool → 1×1 (Szegedy et al. 2015,
    Fig. 2b); ``k5`` is 5 in the paper and 3 in torchvision."""
    return Concat((
        ("branch1", conv(c1, 1)),
        ("branch2", indexed(conv(c3_reduce, 1), conv(c3, 3, padding=1))),
        ("branch3", indexed(conv(c5_reduce, 1), conv(c5, k5, padding=k5 // 2))),
        ("branch4", indexed(Pool(3, 1, 1, ceil_mode=True), conv(pool_proj, 1))),
    ))


def _ceil_pool(kernel: int) -> Pool:
    return Pool(kernel, 2, ceil_mode=True)


GOOGLENET_BODY = seq(
    ("conv1", _bn_conv(64, 7, 2, 3)), ("maxpool1", _ceil_pool(3)), ("conv2", _bn_conv(64, 1)),
    ("conv3", _bn_conv(192, 3, padding=1)), ("maxpool2", _ceil_pool(3)),
    ("inception3a", inception(64, 96, 128, 16, 32, 32)), ("inception3b", inception(128, 128, 192, 32, 96, 64)),
    ("maxpool3", _ceil_pool(3)),
    ("inception4a", inception(192, 96, 208, 16, 48, 64)), ("inception4b", inception(160, 112, 224, 24, 64, 64)),
    ("inception4c", inception(128, 128, 256, 24, 64, 64)), ("inception4d", inception(112, 144, 288, 32, 64, 64)),
    ("inception4e", inception(256, 160, 320, 32, 128, 128)), ("maxpool4", _ceil_pool(2)),
    ("inception5a", inception(256, 160, 320, 32, 128, 128)), ("inception5b", inception(384, 192, 384, 48, 128, 128)),
)


def _googlenet_head(k: int) -> Seq:
    return seq(("avgpool", AdaptivePool(1)), ("flatten", FLATTEN_FN), ("dropout", DROPOUT), ("fc", Linear(k)))


INCEPTION3A = seq(("inception3a", inception(64, 96, 128, 16, 32, 32, conv=_plain_conv, k5=5)))


# ------------------------------------------------------------------------------------------------ ResNet


RESNET_LAYERS: dict[str, tuple[str, tuple[int, ...]]] = {
    **{name: (RESNET_SPECS[name].block, RESNET_SPECS[name].layers) for name in ("resnet18", "resnet34", "resnet50")},
    "resnet101": ("bottleneck", (3, 4, 23, 3)),  # He et al. 2015, Table 1
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def _residual_block(block: str, inplanes: int, planes: int, stride: int) -> Residual:
    """Basic (3×3 → 3×3) or bottleneck (1×1 → 3×3 with the stride → 1×1 ×4), models/resnet.py's layers."""
    if block == "basic":
        convs = [Conv(planes, 3, stride, 1, bias=False), Conv(planes, 3, 1, 1, bias=False)]
    else:
        convs = [Conv(planes, 1, bias=False), Conv(planes, 3, stride, 1, bias=False),
                 Conv(planes * EXPANSION[block], 1, bias=False)]
    path: list[tuple[str, Layer]] = []
    for i, conv in enumerate(convs, 1):
        path += [("relu", RELU)] if path else []
        path += [(f"conv{i}", conv), (f"bn{i}", Norm())]
    out = planes * EXPANSION[block]
    shortcut = None
    if stride != 1 or inplanes != out:  # projection shortcut (option B)
        shortcut = indexed(Conv(out, 1, stride, bias=False), Norm())
    return Residual(Seq(tuple(path)), shortcut)


def _resnet_body(block: str, layers: tuple[int, ...]) -> Seq:
    stem = STEMS["imagenet"]
    assert stem.pool is not None
    parts: list[tuple[str, Layer]] = [("conv1", Conv(stem.widths[0], stem.kernel, stem.stride,
                                                     symmetric_padding(stem.kernel), bias=False)),
                                      ("bn1", Norm()), ("relu", RELU), ("maxpool", Pool(*stem.pool))]
    inplanes = stem.widths[0]
    for i, (width, depth) in enumerate(zip(stem.widths, layers, strict=True)):
        blocks = []
        for b in range(depth):
            blocks.append((str(b), _residual_block(block, inplanes, width, stage_stride(i) if b == 0 else 1)))
            inplanes = width * EXPANSION[block]
        parts.append((f"layer{i + 1}", Seq(tuple(blocks))))
    return Seq(tuple(parts))


# ------------------------------------------------------------------------------------------------ the table


CLASSICS: dict[str, Classic] = {
    "lenet5": Classic("LeNet-5 (LeCun et al. 1998)", (1, 32, 32), LENET5_BODY, _lenet5_head, classes=10),
    "alexnet2012": Classic("AlexNet (Krizhevsky et al. 2012)", (3, 227, 227), ALEXNET2012_BODY,
                           lambda k: _alexnet_head(k, pool=False)),
    "alexnet": Classic("AlexNet, one-GPU (torchvision)", (3, 224, 224), ALEXNET_BODY, _alexnet_head, "alexnet"),
    **{name: Classic(f"VGG-{name[3:]} (Simonyan & Zisserman 2015)", (3, 224, 224), _vgg_body(cfg), _vgg_head, name)
       for name, cfg in VGG_CONFIGS.items()},
    "googlenet": Classic("GoogLeNet (Szegedy et al. 2015; torchvision)", (3, 224, 224), GOOGLENET_BODY,
                         _googlenet_head, "googlenet"),
    "inception3a": Classic("Inception (3a) block (Szegedy et al. 2015)", (192, 28, 28), INCEPTION3A, None),
    **{name: Classic(f"ResNet-{name[6:]} (He et al. 2015)", (3, 224, 224), _resnet_body(*spec), linear_head, name)
       for name, spec in RESNET_LAYERS.items()},
    "mlp": Classic("MLP: VGG's classifier on the pixels", (3, 224, 224), Seq(()), _mlp_head),
}


def check_head(head: str | None) -> None:
    if head is not None and head not in HEADS:
        raise ValueError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")


def parts(name: str, num_classes: int | None = None, head: str | None = None) -> list[tuple[str, Layer]]:
    """(prefix, spec) pairs to walk: the body, then the own classifier or the ``head`` put in its place, for
    ``num_classes`` (default: the paper's)."""
    if name not in CLASSICS:
        raise ValueError(f"unknown classic architecture {name!r}; choose one of {', '.join(CLASSICS)}")
    arch = CLASSICS[name]
    num_classes = num_classes or arch.classes
    if head is None:
        return [("", arch.body)] + ([("", arch.head(num_classes))] if arch.head else [])
    check_head(head)
    if arch.head is None or not arch.body.layers:
        raise ValueError(f"{name} has {'no classifier' if arch.head is None else 'no convolutional body'}: "
                         "there is no head to swap")
    new = linear_head(num_classes) if head == "linear" else fastai_head(num_classes)
    return [("", arch.body), ("" if head == "linear" else "head", new)]


def summarize(name: str, input_chw: tuple[int, int, int] | None = None, num_classes: int | None = None,
              head: str | None = None) -> Summary:
    """Per-layer summary of a classic architecture (default input and classes: the paper's)."""
    layers = parts(name, num_classes, head)  # refuses an unknown name first
    return walk(name, layers, input_chw or CLASSICS[name].input)


# ------------------------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Line:
    """One architecture's totals for the comparison table."""

    name: str
    title: str
    input: tuple[int, int, int]
    depth: int
    params: int
    macs: int
    linear_params: int   # in the fully connected layers
    dense_first: int | None  # weights a fully connected layer would need to produce the first conv's output


def _line(name: str, s: Summary) -> Line:
    first = next((r for r in s.rows if r.type == "Conv2d"), None)
    dense = None if first is None else math.prod(s.input) * math.prod(first.output)
    return Line(name, CLASSICS[name].title, s.input, s.depth, s.params, s.macs,
                sum(r.params for r in s.rows if r.type == "Linear"), dense)


def comparison(input_chw: tuple[int, int, int] | None = None, num_classes: int | None = None) -> list[Line]:
    """Totals of every classic architecture that has a classifier, on its paper's input or on ``input_chw``."""
    return [_line(name, summarize(name, input_chw, num_classes)) for name, arch in CLASSICS.items() if arch.head]


def _si(n: int) -> str:
    """3 significant digits with k, M or G: 61.7 k, 138 M, 15.5 G."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def comparison_markdown(lines: list[Line]) -> str:
    """The comparison as a markdown table (docs/behind-the-scenes/classic-architectures.md)."""
    out = ["| architecture | input | weight layers | parameters | MACs | in fully connected layers | "
           "a dense layer in place of the first conv |", "|---|---|--:|--:|--:|--:|--:|"]
    for x in lines:
        dense = "—" if x.dense_first is None else f"{x.dense_first:.2e} weights"
        out.append(f"| `{x.name}` {x.title} | {'×'.join(map(str, x.input))} | {x.depth} | {x.params:,} | "
                   f"{_si(x.macs)} | {x.linear_params / x.params:.0%} | {dense} |")
    return "\n".join(out)
