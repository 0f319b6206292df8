"""Per-layer summary of an architecture: geometry, output shape, receptive field, parameters and MACs.

The project's archs (``models.registry``) are read from the model's module tree, each module turned into the
torch-free layer it is (``models.spec``); the classic architectures (``models.classic``: LeNet-5, AlexNet, VGG,
GoogLeNet, ResNet-101/152, an MLP) are specs already. Both are sized by the same ``models.spec.Walker``; nothing is
run. ``head`` swaps the classifier: "linear" is global average pooling → one linear layer, "fastai" is fastai's
``create_head`` as ``vision_learner`` puts it on the body; None keeps the architecture's own.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

from torch import nn

from models import classic
from models.spec import (
    FLATTEN_FN,
    AdaptivePool,
    ConcatPool,
    Conv,
    Flatten,
    Leaf,
    Linear,
    Norm,
    Pool,
    Row,
    Same,
    State,
    Summary,
    Walker,
    check_input,
    format_summary,
    join,
)

__all__ = ["HEADS", "Row", "Summary", "body", "fastai_head", "format_summary", "summarize", "summarize_model",
           "to_spec"]

HEADS = classic.HEADS


def to_spec(m: nn.Module) -> Leaf:
    """The torch-free layer a leaf module is (NotImplementedError for one the summary cannot size)."""
    if isinstance(m, nn.Conv2d):
        return Conv(m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,  # type: ignore[arg-type]
                    m.bias is not None, expects=m.in_channels)
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        return Pool(m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1),  # type: ignore[arg-type]
                    m.ceil_mode, type=type(m).__name__)
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return AdaptivePool(m.output_size, type=type(m).__name__)  # type: ignore[arg-type]
    if type(m).__name__ == "AdaptiveConcatPool2d":  # fastai's, with an output size of 1
        return ConcatPool()
    if isinstance(m, nn.Linear):
        return Linear(m.out_features, m.bias is not None, expects=m.in_features)
    if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        return Norm(m.affine, expects=m.num_features, type=type(m).__name__)
    if isinstance(m, nn.Flatten) or type(m).__name__ == "Flatten":  # fastai's Flatten is its own Module
        return Flatten(type(m).__name__)
    if isinstance(m, nn.ReLU | nn.Identity | nn.Dropout | nn.Sequential):  # an empty Sequential: identity
        return Same(type(m).__name__)
    raise NotImplementedError(f"summary does not know how to size {type(m).__name__}")


class _ModuleWalker(Walker):
    """Visits modules in execution order (ResNets, their blocks, fastai's, Sequentials)."""

    def visit(self, name: str, m: nn.Module, st: State) -> State:
        if hasattr(m, "layer1") and hasattr(m, "fc"):  # models.resnet.ResNet and torchvision's ResNet
            return self.resnet(name, m, st)
        if hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "bn1"):  # Basic/Bottleneck, both flavours
            return self.block(name, m, st)
        if hasattr(m, "convpath") and hasattr(m, "idpath"):  # fastai ResBlock
            return self.res_block(name, m, st)
        if isinstance(m, nn.Sequential) and len(m):  # also fastai's ConvLayer and XResNet
            for child_name, child in m.named_children():
                st = self.visit(join(name, child_name), child, st)
            return st
        try:
            return self.leaf(name, to_spec(m), st)
        except NotImplementedError as exc:
            raise NotImplementedError(f"{exc} ({name})") from None

    def resnet(self, name: str, m: nn.Module, st: State) -> State:
        # By name, in forward()'s order, with the flatten that forward() does functionally.
        stages = getattr(m, "stages", [s for s in ("layer1", "layer2", "layer3", "layer4") if hasattr(m, s)])
        for child in ("conv1", "bn1", "relu", "maxpool", *stages, "avgpool"):
            st = self.visit(join(name, child), getattr(m, child), st)
        st = self.leaf(join(name, "flatten"), FLATTEN_FN, st)
        return self.visit(join(name, "fc"), m.fc, st)

    def block(self, name: str, m: nn.Module, st: State) -> State:
        order = ["conv1", "bn1", "relu", "conv2", "bn2"]
        if hasattr(m, "conv3"):
            order += ["relu", "conv3", "bn3"]
        out = st
        for child in order:
            out = self.visit(join(name, child), getattr(m, child), out)
        if getattr(m, "skip", True):
            side = st if m.downsample is None else self.visit(join(name, "downsample"), m.downsample, st)
            out = self.merge(name, out, side)
        return self.visit(join(name, "relu"), m.relu, out)

    def res_block(self, name: str, m: nn.Module, st: State) -> State:
        out = self.visit(join(name, "convpath"), m.convpath, st)
        out = self.merge(name, out, self.visit(join(name, "idpath"), m.idpath, st))
        return self.visit(join(name, "act"), m.act, out)


def summarize_model(model: nn.Module, input_chw: tuple[int, int, int], arch: str = "",
                    head: nn.Module | None = None) -> Summary:
    """Summary of any model built from the modules the walker knows (ResNets, xresnets, Sequentials); with
    ``head``, of the model's body (``body``) followed by that head."""
    check_input(input_chw)
    walker = _ModuleWalker()
    st = State(tuple(input_chw), (1, 1), (1, 1))
    try:
        if head is None:
            walker.visit("", model, st)
        else:
            walker.visit("head", head, walker.visit("", body(model), st))
    except ValueError as exc:
        raise ValueError(f"input {'x'.join(map(str, input_chw))} does not fit {arch or 'the model'}: {exc}") from exc
    return Summary(arch, tuple(input_chw), walker.rows)  # type: ignore[arg-type]


def body(model: nn.Module) -> nn.Sequential:
    """The model without its head: its children up to the last one that pools (fastai's ``create_body`` cut),
    under their own names."""
    children = list(model.named_children())
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    cut = max(i for i, (_, c) in enumerate(children) if any(isinstance(x, pools) for x in c.modules()))
    return nn.Sequential(OrderedDict(children[:cut]))


def summarize(arch: str, input_chw: tuple[int, int, int], num_classes: int | None = 1000,
              head: str | None = None) -> Summary:
    """Summary of ``models.registry.create(arch, num_classes, C)`` for a (C, H, W) input, or of the classic
    architecture ``arch`` (``models.classic``) where the registry has no such name. ``num_classes`` None: 1000,
    or the paper's for a classic one."""
    from models import registry

    check_input(input_chw)  # before building the model
    classic.check_head(head)
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--classes must be >= 1, got {num_classes}")
    if arch not in registry.ARCHS:
        if arch in classic.CLASSICS:
            return classic.summarize(arch, input_chw, num_classes, head)
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(registry.ARCHS)}, or a classic "
                         f"architecture: {', '.join(n for n in classic.CLASSICS if n not in registry.ARCHS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fastai's import-time torch.jit deprecation notice
        model = registry.create(arch, num_classes or 1000, input_chw[0])
    if head != "fastai":  # the project's heads are all "linear": global average pooling → fc
        return summarize_model(model, input_chw, arch)
    return summarize_model(model, input_chw, arch, fastai_head(model, input_chw, num_classes or 1000))


def fastai_head(model: nn.Module, input_chw: tuple[int, int, int], num_classes: int) -> nn.Module:
    """fastai's ``create_head`` for the features ``body(model)`` gives on this input."""
    from fastai.vision.learner import create_head

    features = summarize_model(body(model), input_chw).output[0]
    return create_head(features, num_classes)

