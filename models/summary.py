"""Per-layer summary of an architecture: geometry, output shape, receptive field, parameters and MACs.

The layers are read from the model's module tree (``models.registry.create``), but nothing is run: every output
size comes from ``models.shapes`` (the same arithmetic the PyTorch model's paddings and the NumPy reference use),
and the receptive field from its recurrence

    r_out = r_in + (d·(k−1)+1 − 1) · j_in,     j_out = j_in · s        (r = j = 1 at the input)

(Araujo et al. 2019, "Computing Receptive Fields of Convolutional Neural Networks", Distill). Where a residual
block's two paths meet, the sum sees the larger field. MACs count the multiply-accumulates of convolutions
(C_out·H_out·W_out·C_in/groups·kh·kw) and linear layers (in·out); normalisation, activations, pooling and the
residual sums are reported as 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from models.shapes import (
    Window,
    adaptive_pool_bins,
    conv_output_size,
    extend_receptive_field,
    padding_pairs,
    pair,
    pool_output_size,
    resolve_padding,
)

__all__ = ["Row", "Summary", "format_summary", "summarize", "summarize_model"]

Pair = tuple[int, int]


@dataclass(frozen=True)
class Row:
    """One executed layer. ``module`` is False for the functional steps (residual sum, flatten)."""

    name: str
    type: str
    output: tuple[int, ...]  # one sample: (C, H, W) or (features,)
    rf: Pair
    jump: Pair
    params: int = 0
    macs: int = 0
    kernel: Pair | None = None
    stride: Pair | None = None
    padding: tuple[Pair, Pair] | None = None  # ((top, bottom), (left, right))
    dilation: Pair | None = None
    module: bool = True


@dataclass
class Summary:
    arch: str
    input: tuple[int, int, int]
    rows: list[Row] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def output(self) -> tuple[int, ...]:
        return self.rows[-1].output


@dataclass(frozen=True)
class _State:
    shape: tuple[int, ...]
    rf: Pair
    jump: Pair

    def spatial(self, name: str) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise ValueError(f"{name} needs a (C, H, W) input, got {self.shape}")
        return self.shape  # type: ignore[return-value]


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


class _Walker:
    """Visits modules in execution order, appending one Row per executed layer."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def emit(self, name: str, m: nn.Module | str, st: _State, **kw: object) -> _State:
        type_name = m if isinstance(m, str) else type(m).__name__
        params = 0 if isinstance(m, str) else _params(m)
        self.rows.append(Row(name, type_name, st.shape, st.rf, st.jump, params=params,
                             module=not isinstance(m, str), **kw))  # type: ignore[arg-type]
        return st

    def window(self, st: _State, kernel: Pair, stride: Pair, dilation: Pair, out_hw: Pair, channels: int) -> _State:
        grown = [extend_receptive_field(st.rf[a], st.jump[a], Window(kernel[a], stride[a], dilation[a]))
                 for a in (0, 1)]
        return _State((channels, *out_hw), (grown[0][0], grown[1][0]), (grown[0][1], grown[1][1]))

    # ---- leaves -------------------------------------------------------------------------------------------
    def conv(self, name: str, m: nn.Conv2d, st: _State) -> _State:
        c, h, w = st.spatial(name)
        if c != m.in_channels:
            raise ValueError(f"{name} expects {m.in_channels} channels, gets {c}")
        k, s, d = pair(m.kernel_size), pair(m.stride), pair(m.dilation)
        pads = resolve_padding(m.padding, k, d, s)
        out = (conv_output_size(h, k[0], s[0], pads[0], d[0]), conv_output_size(w, k[1], s[1], pads[1], d[1]))
        macs = m.out_channels * out[0] * out[1] * (m.in_channels // m.groups) * k[0] * k[1]
        new = self.window(st, k, s, d, out, m.out_channels)
        return self.emit(name, m, new, kernel=k, stride=s, padding=pads, dilation=d, macs=macs)

    def pool(self, name: str, m: nn.MaxPool2d | nn.AvgPool2d, st: _State) -> _State:
        c, h, w = st.spatial(name)
        k = pair(m.kernel_size)
        s = k if m.stride is None else pair(m.stride)
        p = pair(m.padding)
        d = pair(getattr(m, "dilation", 1))
        out = tuple(pool_output_size((h, w)[a], k[a], s[a], p[a], d[a], m.ceil_mode) for a in (0, 1))
        new = self.window(st, k, s, d, out, c)  # type: ignore[arg-type]
        return self.emit(name, m, new, kernel=k, stride=s, padding=padding_pairs(p), dilation=d)

    def adaptive(self, name: str, m: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d, st: _State) -> _State:
        c, h, w = st.spatial(name)
        size = m.output_size
        oh, ow = (size, size) if isinstance(size, int) else (size[0] or h, size[1] or w)
        # Bins differ in size when o does not divide n: the widest bin bounds the field.
        k = tuple(max(b - a for a, b in adaptive_pool_bins(n, o)) for n, o in ((h, oh), (w, ow)))
        s = (max(1, h // oh), max(1, w // ow))
        new = self.window(st, k, s, (1, 1), (oh, ow), c)  # type: ignore[arg-type]
        return self.emit(name, m, new, kernel=k, stride=s)

    def linear(self, name: str, m: nn.Linear, st: _State) -> _State:
        if st.shape != (m.in_features,):
            raise ValueError(f"{name} expects {m.in_features} features, gets {st.shape}")
        return self.emit(name, m, _State((m.out_features,), st.rf, st.jump), macs=m.in_features * m.out_features)

    def flatten(self, name: str, m: nn.Module | str, st: _State) -> _State:
        return self.emit(name, m, _State((math.prod(st.shape),), st.rf, st.jump))

    def leaf(self, name: str, m: nn.Module, st: _State) -> _State:
        if isinstance(m, nn.Conv2d):
            return self.conv(name, m, st)
        if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            return self.pool(name, m, st)
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            return self.adaptive(name, m, st)
        if isinstance(m, nn.Linear):
            return self.linear(name, m, st)
        if isinstance(m, nn.Flatten) or type(m).__name__ == "Flatten":  # fastai's Flatten is its own Module
            return self.flatten(name, m, st)
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            if st.shape[0] != m.num_features:
                raise ValueError(f"{name} normalises {m.num_features} channels, gets {st.shape}")
            return self.emit(name, m, st)
        if isinstance(m, nn.ReLU | nn.Identity | nn.Dropout | nn.Sequential):  # an empty Sequential: identity
            return self.emit(name, m, st)
        raise NotImplementedError(f"summary does not know how to size {name} ({type(m).__name__})")

    # ---- containers ---------------------------------------------------------------------------------------
    def visit(self, name: str, m: nn.Module, st: _State) -> _State:
        if hasattr(m, "layer1") and hasattr(m, "fc"):  # models.resnet.ResNet and torchvision's ResNet
            return self.resnet(name, m, st)
        if hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "bn1"):  # Basic/Bottleneck, both flavours
            return self.block(name, m, st)
        if hasattr(m, "convpath") and hasattr(m, "idpath"):  # fastai ResBlock
            return self.res_block(name, m, st)
        if isinstance(m, nn.Sequential) and len(m):  # also fastai's ConvLayer and XResNet
            for child_name, child in m.named_children():
                st = self.visit(_join(name, child_name), child, st)
            return st
        return self.leaf(name, m, st)

    def resnet(self, name: str, m: nn.Module, st: _State) -> _State:
        # By name, in forward()'s order, with the flatten that forward() does functionally.
        stages = getattr(m, "stages", [s for s in ("layer1", "layer2", "layer3", "layer4") if hasattr(m, s)])
        for child in ("conv1", "bn1", "relu", "maxpool", *stages, "avgpool"):
            st = self.visit(_join(name, child), getattr(m, child), st)
        st = self.flatten(_join(name, "flatten"), "flatten", st)
        return self.visit(_join(name, "fc"), m.fc, st)

    def _merge(self, name: str, main: _State, side: _State | None, act: tuple[str, nn.Module]) -> _State:
        if side is not None:
            if side.shape != main.shape or side.jump != main.jump:
                raise ValueError(f"{name}: residual paths disagree: {main.shape} vs shortcut {side.shape}")
            rf = (max(main.rf[0], side.rf[0]), max(main.rf[1], side.rf[1]))
            main = self.emit(_join(name, "add"), "add", _State(main.shape, rf, main.jump))
        return self.visit(act[0], act[1], main)

    def block(self, name: str, m: nn.Module, st: _State) -> _State:
        order = ["conv1", "bn1", "relu", "conv2", "bn2"]
        if hasattr(m, "conv3"):
            order += ["relu", "conv3", "bn3"]
        out = st
        for child in order:
            out = self.visit(_join(name, child), getattr(m, child), out)
        side = None
        if getattr(m, "skip", True):
            side = st if m.downsample is None else self.visit(_join(name, "downsample"), m.downsample, st)
        return self._merge(name, out, side, (_join(name, "relu"), m.relu))

    def res_block(self, name: str, m: nn.Module, st: _State) -> _State:
        out = self.visit(_join(name, "convpath"), m.convpath, st)
        side = self.visit(_join(name, "idpath"), m.idpath, st)
        return self._merge(name, out, side, (_join(name, "act"), m.act))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_input(input_chw: tuple[int, int, int]) -> None:
    if len(input_chw) != 3 or min(input_chw) < 1:
        raise ValueError(f"input must be C,H,W with every size >= 1, got {','.join(map(str, input_chw))}")


def summarize_model(model: nn.Module, input_chw: tuple[int, int, int], arch: str = "") -> Summary:
    """Summary of any model built from the modules the walker knows (ResNets, xresnets, Sequentials)."""
    _check_input(input_chw)
    walker = _Walker()
    try:
        walker.visit("", model, _State(tuple(input_chw), (1, 1), (1, 1)))
    except ValueError as exc:
        raise ValueError(f"input {'x'.join(map(str, input_chw))} does not fit {arch or 'the model'}: {exc}") from exc
    return Summary(arch, tuple(input_chw), walker.rows)  # type: ignore[arg-type]


def summarize(arch: str, input_chw: tuple[int, int, int], num_classes: int = 1000) -> Summary:
    """Summary of ``models.registry.create(arch, num_classes, C)`` for a (C, H, W) input."""
    from models import registry

    _check_input(input_chw)  # before building the model
    if num_classes < 1:
        raise ValueError(f"--classes must be >= 1, got {num_classes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fastai's import-time torch.jit deprecation notice
        model = registry.create(arch, num_classes, input_chw[0])
    return summarize_model(model, input_chw, arch)


def _fmt_pair(p: Pair | None) -> str:
    if p is None:
        return "-"
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def _fmt_padding(p: tuple[Pair, Pair] | None) -> str:
    if p is None:
        return "-"
    (t, b), (left, right) = p
    if t == b == left == right:
        return str(t)
    if t == b and left == right:
        return f"{t}x{left}"
    return f"({t},{b}),({left},{right})"


def _lines(s: Summary) -> Iterator[list[str]]:
    yield ["layer", "type", "kernel", "stride", "padding", "dilation", "output", "RF", "jump", "params", "MACs"]
    yield ["input", "", "", "", "", "", "x".join(map(str, s.input)), "1", "1", "", ""]
    for r in s.rows:
        yield [r.name, r.type, _fmt_pair(r.kernel), _fmt_pair(r.stride), _fmt_padding(r.padding),
               _fmt_pair(r.dilation), "x".join(map(str, r.output)), _fmt_pair(r.rf), _fmt_pair(r.jump),
               f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else ""]


def format_summary(s: Summary) -> str:
    """The table, then totals."""
    table = list(_lines(s))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {2, 3, 4, 5, 7, 8, 9, 10}
    out = []
    for j, row in enumerate(table):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("-" * len(out[0]))
    out.append("-" * len(out[0]))
    out.append(f"{s.arch}: input {'x'.join(map(str, s.input))} -> output {'x'.join(map(str, s.output))}; "
               f"{s.params:,} parameters; {s.macs:,} MACs ({s.macs / 1e9:.3f} G); "
               f"receptive field {_fmt_pair(s.rows[-1].rf)} px")
    return "\n".join(out)
