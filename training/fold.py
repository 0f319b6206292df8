"""Fold every BatchNorm of an eval-mode network into the convolution or linear layer next to it.

In eval mode a BatchNorm is a fixed per-channel affine map ``y = x · s + t`` with ``s = γ / √(σ² + ε)`` and
``t = β − μ · s``, so it can be merged into a neighbouring linear layer without changing the function:

- conv → BN    (every ResNet's conv/bn pairs, fastai's ``ConvLayer``):  W' = W · s (per output channel), b' = b · s + t;
- linear → BN  (``BatchNorm1d`` after a ``Linear``):                      the same, per output feature;
- BN → linear  (fastai's ``create_head``: ``BatchNorm1d`` → Dropout → Linear):  W' = W · s (per input feature),
  b' = b + W · t.

BN → conv is *not* folded: the convolution's zero padding would see ``t`` where the original saw 0.

The pairs are found from the data flow, not from module names: the network is traced with ``torch.fx`` and shapes
are propagated with an example input, so a pair is folded only when the first layer's output goes nowhere else
(through eval-mode no-ops such as Dropout) and the channel axis is the one BatchNorm normalises. A BatchNorm that
has no such neighbour (a pre-activation network, an untraceable model) becomes an explicit per-channel multiply-add
(``Affine``), so the exported graph never holds a BatchNormalization node. Everything happens on a deep copy; the
caller's model is not touched.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "Affine",
    "FoldReport",
    "bn_scale_shift",
    "fold_batchnorm",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "fuse_linear_bn",
    "max_abs_diff",
]

# Modules that are the identity in eval mode: a pair may be separated by them.
PASS_THROUGH: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                              nn.AlphaDropout)
CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def bn_scale_shift(bn: _BatchNorm) -> tuple[Tensor, Tensor]:
    """The eval-mode BatchNorm as ``x · scale + shift``, computed in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    var = bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _set_weight_bias(layer: nn.Conv2d | nn.Linear | nn.Module, weight: Tensor, bias: Tensor) -> None:
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _bias(layer: nn.Module, n: int) -> Tensor:
    b = getattr(layer, "bias", None)
    return b.detach().double() if b is not None else torch.zeros(n, dtype=torch.float64)


def fuse_conv_bn(conv: nn.Module, bn: _BatchNorm) -> None:
    """conv → BN: scale each output channel's filter and bias (in place on ``conv``)."""
    scale, shift = bn_scale_shift(bn)
    w = conv.weight.detach().double()
    shape = (-1,) + (1,) * (w.dim() - 1)
    _set_weight_bias(conv, w * scale.reshape(shape), _bias(conv, w.shape[0]) * scale + shift)


def fuse_linear_bn(linear: nn.Linear, bn: _BatchNorm) -> None:
    """linear → BN: scale each output feature's row and bias (in place on ``linear``)."""
    scale, shift = bn_scale_shift(bn)
    w = linear.weight.detach().double()
    _set_weight_bias(linear, w * scale[:, None], _bias(linear, w.shape[0]) * scale + shift)


def fuse_bn_linear(bn: _BatchNorm, linear: nn.Linear) -> None:
    """BN → linear: scale each input feature's column and move the shift into the bias (in place on ``linear``)."""
    scale, shift = bn_scale_shift(bn)
    w = linear.weight.detach().double()
    _set_weight_bias(linear, w * scale[None, :], _bias(linear, w.shape[0]) + w @ shift)


class Affine(nn.Module):
    """Per-channel ``x · scale + shift`` on axis 1: an eval-mode BatchNorm that had no layer to fold into."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("shift", shift.float())

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    @classmethod
    def from_bn(cls, bn: _BatchNorm) -> Affine:
        return cls(*bn_scale_shift(bn))


@dataclass
class FoldReport:
    """Which modules were folded into which (qualified names in the model)."""

    conv_bn: list[tuple[str, str]] = field(default_factory=list)
    linear_bn: list[tuple[str, str]] = field(default_factory=list)
    bn_linear: list[tuple[str, str]] = field(default_factory=list)
    affine: list[str] = field(default_factory=list)
    traced: bool = True

    def summary(self) -> dict[str, int | bool]:
        return {"conv_bn": len(self.conv_bn), "linear_bn": len(self.linear_bn), "bn_linear": len(self.bn_linear),
                "affine": len(self.affine), "traced": self.traced}


def _module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _ndim(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _producer(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The node feeding ``node``'s first input, skipping eval-mode no-ops; None if any hop has other users."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src = node.args[0]
    while len(src.users) == 1 and isinstance(_module_of(gm, src), PASS_THROUGH):
        if not src.args or not isinstance(src.args[0], fx.Node):
            return None
        src = src.args[0]
    return src if len(src.users) == 1 else None


def _consumer(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The single node using ``node``'s output, skipping eval-mode no-ops."""
    dst = node
    while len(dst.users) == 1:
        (nxt,) = dst.users
        if not isinstance(_module_of(gm, nxt), PASS_THROUGH):
            return nxt
        dst = nxt
    return None


def _find_pairs(model: nn.Module, example: Tensor) -> tuple[list[tuple[str, str]], list[tuple[str, str]],
                                                            list[tuple[str, str]]]:
    """(conv_bn, linear_bn, bn_linear) pairs of qualified module names, from the traced data flow."""
    gm = fx.symbolic_trace(model)
    ShapeProp(gm).propagate(example)
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    once = {name for name, count in calls.items() if count == 1}  # a shared module cannot be folded for one use
    conv_bn: list[tuple[str, str]] = []
    linear_bn: list[tuple[str, str]] = []
    bn_linear: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        bn = _module_of(gm, node)
        if not isinstance(bn, _BatchNorm) or str(node.target) not in once:
            continue
        src = _producer(gm, node)
        layer = _module_of(gm, src) if src is not None else None
        if src is not None and str(src.target) in once:
            if isinstance(layer, CONVS) and layer.out_channels == bn.num_features:
                conv_bn.append((str(src.target), str(node.target)))
                continue
            # A Linear's features sit on the last axis, a BatchNorm's channels on axis 1: same only in 2-D.
            if isinstance(layer, nn.Linear) and _ndim(src) == 2 and layer.out_features == bn.num_features:
                linear_bn.append((str(src.target), str(node.target)))
                continue
        dst = _consumer(gm, node)
        layer = _module_of(gm, dst) if dst is not None else None
        if (isinstance(layer, nn.Linear) and str(dst.target) in once and _ndim(node) == 2
                and layer.in_features == bn.num_features):
            bn_linear.append((str(node.target), str(dst.target)))
    return conv_bn, linear_bn, bn_linear


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def fold_batchnorm(model: nn.Module, example: Tensor, log=None) -> tuple[nn.Module, FoldReport]:
    """An eval-mode deep copy of ``model`` without BatchNorm modules, and what was folded into what.

    ``example`` is one input batch (any values; its shape fixes the tensor ranks used to check the pairs).
    """
    folded = copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    report = FoldReport()
    try:
        with torch.no_grad():
            report.conv_bn, report.linear_bn, report.bn_linear = _find_pairs(folded, example)
    except Exception as e:  # any tracing failure: fall back to per-channel affines, still correct
        report.traced = False
        if log is not None:
            log(f"fold: cannot trace {type(model).__name__} ({type(e).__name__}: {e}); BatchNorms become affines")
    with torch.no_grad():
        for conv, bn in report.conv_bn:
            fuse_conv_bn(folded.get_submodule(conv), folded.get_submodule(bn))
        for linear, bn in report.linear_bn:
            fuse_linear_bn(folded.get_submodule(linear), folded.get_submodule(bn))
        for bn, linear in report.bn_linear:
            fuse_bn_linear(folded.get_submodule(bn), folded.get_submodule(linear))
    for bn in {b for _, b in report.conv_bn + report.linear_bn} | {b for b, _ in report.bn_linear}:
        _replace(folded, bn, nn.Identity())
    for name, module in list(folded.named_modules()):
        if isinstance(module, _BatchNorm):
            _replace(folded, name, Affine.from_bn(module))
            report.affine.append(name)
    return folded, report


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """Largest |a(x) − b(x)| (both in eval mode)."""
    return float((a.eval()(x) - b.eval()(x)).abs().max())
