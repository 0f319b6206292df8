"""Layers as plain data, and the one walk that sizes them: output shape, receptive field, parameters and MACs.

Torch-free. ``models.classic`` writes the classic architectures with these layers; ``models.summary`` turns a
PyTorch module tree into the same layers; both tables come out of ``Walker``, so the two cannot count differently.
Every output size comes from ``models.shapes`` (the arithmetic the PyTorch model and the NumPy reference use), the
receptive field from its recurrence

    r_out = r_in + (d·(k−1)+1 − 1) · j_in,     j_out = j_in · s        (r = j = 1 at the input)

(Araujo et al. 2019, "Computing Receptive Fields of Convolutional Neural Networks", Distill). Where paths meet (a
residual sum, an Inception concatenation) the output sees the largest field. MACs count the multiply-accumulates of
convolutions (C_out·H_out·W_out·C_in/groups·kh·kw) and linear layers (in·out); normalisation, activations, pooling,
sums and concatenations count 0. ``depth`` counts the convolutions and linear layers on the longest path, the way
the papers name their networks (VGG-16, ResNet-152).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from models.shapes import (
    IntPair,
    Padding,
    Window,
    adaptive_pool_bins,
    conv_output_size,
    extend_receptive_field,
    padding_pairs,
    pair,
    pool_output_size,
    resolve_padding,
)

__all__ = [
    "AdaptivePool", "Concat", "ConcatPool", "Conv", "Flatten", "Layer", "Linear", "Norm", "Pool", "Residual", "Row",
    "Same", "Seq", "State", "Summary", "Walker", "check_input", "fastai_head", "format_summary", "join",
    "linear_head", "walk",
]

Pair = tuple[int, int]


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    """One executed layer. ``module`` is False for the functional steps (residual sum, concatenation, flatten)."""

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
    depth: int = 0  # convolutions and linear layers on the longest path up to here


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

    @property
    def depth(self) -> int:
        return self.rows[-1].depth


# ------------------------------------------------------------------------------------------------ layers


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution; ``expects`` is the input width it was built for (checked when known)."""

    out: int
    kernel: IntPair
    stride: IntPair = 1
    padding: Padding = 0
    dilation: IntPair = 1
    groups: int = 1
    bias: bool = True
    expects: int | None = None
    type: str = "Conv2d"


@dataclass(frozen=True)
class Pool:
    """Max or average pooling over a fixed window (``type`` "MaxPool2d" or "AvgPool2d")."""

    kernel: IntPair
    stride: IntPair | None = None  # None: the kernel
    padding: IntPair = 0
    dilation: IntPair = 1
    ceil_mode: bool = False
    type: str = "MaxPool2d"


@dataclass(frozen=True)
class AdaptivePool:
    """Adaptive pooling to ``output`` (None keeps that side)."""

    output: int | tuple[int | None, int | None]
    type: str = "AdaptiveAvgPool2d"


@dataclass(frozen=True)
class ConcatPool:
    """fastai's AdaptiveConcatPool2d(1): global max and global average, concatenated (2C features of 1×1)."""

    type: str = "AdaptiveConcatPool2d"


@dataclass(frozen=True)
class Linear:
    out: int
    bias: bool = True
    expects: int | None = None
    type: str = "Linear"


@dataclass(frozen=True)
class Norm:
    """Batch norm (2-D or 1-D): γ and β per channel when ``affine``."""

    affine: bool = True
    expects: int | None = None
    type: str = "BatchNorm2d"


@dataclass(frozen=True)
class Same:
    """A parameter-free layer that keeps the shape: activation, dropout, identity."""

    type: str = "ReLU"
    module: bool = True


@dataclass(frozen=True)
class Flatten:
    type: str = "Flatten"
    module: bool = True


Leaf = Conv | Pool | AdaptivePool | ConcatPool | Linear | Norm | Same | Flatten


@dataclass(frozen=True)
class Seq:
    """Named layers, run in order."""

    layers: tuple[tuple[str, Layer], ...]


@dataclass(frozen=True)
class Residual:
    """act(path(x) + shortcut(x)); shortcut None is the identity. Rows: path, shortcut as ``downsample``, add, act."""

    path: Seq
    shortcut: Seq | None
    act: Layer = Same()
    act_name: str = "relu"


@dataclass(frozen=True)
class Concat:
    """Branches run on the same input, their outputs concatenated along the channels (an Inception block)."""

    branches: tuple[tuple[str, Layer], ...]


Layer = Leaf | Seq | Residual | Concat

RELU = Same("ReLU")
FLATTEN_FN = Flatten("flatten", module=False)  # torch.flatten inside forward(), not a module


def seq(*layers: tuple[str, Layer]) -> Seq:
    return Seq(tuple(layers))


def linear_head(num_classes: int) -> Seq:
    """Global average pooling → linear classifier (ResNet's head, and the project's)."""
    return seq(("avgpool", AdaptivePool(1)), ("flatten", FLATTEN_FN), ("fc", Linear(num_classes)))


def fastai_head(num_classes: int, hidden: int = 512) -> Seq:
    """fastai's ``create_head(nf, n_out)`` as ``vision_learner`` puts it on a body: concat pool → flatten →
    BN → dropout → linear (no bias) → ReLU → BN → dropout → linear (no bias)."""
    return seq(("0", ConcatPool()), ("1", Flatten()), ("2", Norm(type="BatchNorm1d")), ("3", Same("Dropout")),
               ("4", Linear(hidden, bias=False)), ("5", RELU), ("6", Norm(type="BatchNorm1d")), ("7", Same("Dropout")),
               ("8", Linear(num_classes, bias=False)))


# ------------------------------------------------------------------------------------------------ the walk


@dataclass(frozen=True)
class State:
    """What flows from layer to layer: one sample's shape, its receptive field and jump, the depth so far."""

    shape: tuple[int, ...]
    rf: Pair
    jump: Pair
    depth: int = 0

    def spatial(self, name: str) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise ValueError(f"{name} needs a (C, H, W) input, got {self.shape}")
        return self.shape  # type: ignore[return-value]


def join(prefix: str, name: str) -> str:
    """A child's row name: ``prefix.name``, or ``name`` at the top."""
    return f"{prefix}.{name}" if prefix else name


class Walker:
    """Steps through layers in execution order, appending one Row per executed layer."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def emit(self, name: str, type_name: str, st: State, module: bool = True, **kw: object) -> State:
        self.rows.append(Row(name, type_name, st.shape, st.rf, st.jump, module=module, depth=st.depth,
                             **kw))  # type: ignore[arg-type]
        return st

    def window(self, st: State, kernel: Pair, stride: Pair, dilation: Pair, out_hw: Sequence[int],
               channels: int, weighted: bool = False) -> State:
        grown = [extend_receptive_field(st.rf[a], st.jump[a], Window(kernel[a], stride[a], dilation[a]))
                 for a in (0, 1)]
        return State((channels, *out_hw), (grown[0][0], grown[1][0]), (grown[0][1], grown[1][1]),
                     st.depth + weighted)

    # ---- leaves -------------------------------------------------------------------------------------------
    def conv(self, name: str, layer: Conv, st: State) -> State:
        c, h, w = st.spatial(name)
        if layer.expects is not None and c != layer.expects:
            raise ValueError(f"{name} expects {layer.expects} channels, gets {c}")
        if c % layer.groups or layer.out % layer.groups:
            raise ValueError(f"{name}: {c} → {layer.out} channels do not split into {layer.groups} groups")
        k, s, d = pair(layer.kernel), pair(layer.stride), pair(layer.dilation)
        pads = resolve_padding(layer.padding, k, d, s)
        out = (conv_output_size(h, k[0], s[0], pads[0], d[0]), conv_output_size(w, k[1], s[1], pads[1], d[1]))
        taps = (c // layer.groups) * k[0] * k[1]
        new = self.window(st, k, s, d, out, layer.out, weighted=True)
        return self.emit(name, layer.type, new, kernel=k, stride=s, padding=pads, dilation=d,
                         params=layer.out * taps + layer.out * layer.bias, macs=layer.out * out[0] * out[1] * taps)

    def pool(self, name: str, layer: Pool, st: State) -> State:
        c, h, w = st.spatial(name)
        k = pair(layer.kernel)
        s = k if layer.stride is None else pair(layer.stride)
        p, d = pair(layer.padding), pair(layer.dilation)
        out = [pool_output_size((h, w)[a], k[a], s[a], p[a], d[a], layer.ceil_mode) for a in (0, 1)]
        new = self.window(st, k, s, d, out, c)
        return self.emit(name, layer.type, new, kernel=k, stride=s, padding=padding_pairs(p), dilation=d)

    def adaptive(self, name: str, layer: AdaptivePool | ConcatPool, st: State) -> State:
        c, h, w = st.spatial(name)
        size = 1 if isinstance(layer, ConcatPool) else layer.output
        oh, ow = (size, size) if isinstance(size, int) else (size[0] or h, size[1] or w)
        # Bins differ in size when o does not divide n: the widest bin bounds the field.
        k = tuple(max(b - a for a, b in adaptive_pool_bins(n, o)) for n, o in ((h, oh), (w, ow)))
        s = (max(1, h // oh), max(1, w // ow))
        channels = 2 * c if isinstance(layer, ConcatPool) else c
        new = self.window(st, k, s, (1, 1), (oh, ow), channels)  # type: ignore[arg-type]
        return self.emit(name, layer.type, new, kernel=k, stride=s)

    def linear(self, name: str, layer: Linear, st: State) -> State:
        if len(st.shape) != 1 or (layer.expects is not None and st.shape[0] != layer.expects):
            raise ValueError(f"{name} expects {layer.expects or 'flat'} features, gets {st.shape}")
        n = st.shape[0]
        new = State((layer.out,), st.rf, st.jump, st.depth + 1)
        return self.emit(name, layer.type, new, params=n * layer.out + layer.out * layer.bias, macs=n * layer.out)

    def norm(self, name: str, layer: Norm, st: State) -> State:
        if layer.expects is not None and st.shape[0] != layer.expects:
            raise ValueError(f"{name} normalises {layer.expects} channels, gets {st.shape}")
        return self.emit(name, layer.type, st, params=2 * st.shape[0] if layer.affine else 0)

    def leaf(self, name: str, layer: Leaf, st: State) -> State:
        if isinstance(layer, Conv):
            return self.conv(name, layer, st)
        if isinstance(layer, Pool):
            return self.pool(name, layer, st)
        if isinstance(layer, AdaptivePool | ConcatPool):
            return self.adaptive(name, layer, st)
        if isinstance(layer, Linear):
            return self.linear(name, layer, st)
        if isinstance(layer, Norm):
            return self.norm(name, layer, st)
        if isinstance(layer, Flatten):
            return self.emit(name, layer.type, replace(st, shape=(math.prod(st.shape),)), module=layer.module)
        return self.emit(name, layer.type, st, module=layer.module)

    # ---- where paths meet ---------------------------------------------------------------------------------
    def merge(self, name: str, main: State, side: State) -> State:
        """The residual sum of two paths: same shape and jump; the larger field and depth."""
        if side.shape != main.shape or side.jump != main.jump:
            raise ValueError(f"{name}: residual paths disagree: {main.shape} vs shortcut {side.shape}")
        return self.emit(join(name, "add"), "add", _widest(main.shape, main, side), module=False)

    def concat(self, name: str, outs: list[State]) -> State:
        """Channel concatenation of branches that agree on the spatial size and jump."""
        if len({o.shape[1:] for o in outs}) != 1 or len({o.jump for o in outs}) != 1:
            raise ValueError(f"{name}: branches disagree: {[o.shape for o in outs]}")
        shape = (sum(o.shape[0] for o in outs), *outs[0].shape[1:])
        return self.emit(join(name, "cat"), "cat", _widest(shape, *outs), module=False)

    # ---- specs --------------------------------------------------------------------------------------------
    def walk(self, name: str, layer: Layer, st: State) -> State:
        if isinstance(layer, Seq):
            for child, sub in layer.layers:
                st = self.walk(join(name, child), sub, st)
            return st
        if isinstance(layer, Residual):
            out = self.walk(name, layer.path, st)
            side = st if layer.shortcut is None else self.walk(join(name, "downsample"), layer.shortcut, st)
            return self.walk(join(name, layer.act_name), layer.act, self.merge(name, out, side))
        if isinstance(layer, Concat):
            return self.concat(name, [self.walk(join(name, b), sub, st) for b, sub in layer.branches])
        return self.leaf(name, layer, st)


def _widest(shape: tuple[int, ...], *states: State) -> State:
    """The state after paths meet: each axis' largest receptive field, the deepest path."""
    rf = (max(s.rf[0] for s in states), max(s.rf[1] for s in states))
    return State(shape, rf, states[0].jump, max(s.depth for s in states))


def check_input(input_chw: tuple[int, ...]) -> None:
    if len(input_chw) != 3 or min(input_chw) < 1:
        raise ValueError(f"input must be C,H,W with every size >= 1, got {','.join(map(str, input_chw))}")


def walk(arch: str, parts: Sequence[tuple[str, Layer]], input_chw: tuple[int, int, int]) -> Summary:
    """Summary of the named parts (body, head …) run one after the other on a (C, H, W) input."""
    check_input(input_chw)
    walker = Walker()
    st = State(tuple(input_chw), (1, 1), (1, 1))
    try:
        for name, part in parts:
            st = walker.walk(name, part, st)
    except ValueError as exc:
        raise ValueError(f"input {'x'.join(map(str, input_chw))} does not fit {arch}: {exc}") from exc
    return Summary(arch, tuple(input_chw), walker.rows)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ printing


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
