"""Shape arithmetic for convolutions and pooling, written once and shared.

The PyTorch ResNet, the NumPy reference (models/scratch) and the summary CLI all import these functions, so
a padding rule or an output-size formula cannot drift between them.

For one spatial dimension of size ``n``, kernel ``k``, stride ``s``, padding ``p`` on each side and dilation
``d``, the effective kernel extent is ``d·(k−1)+1`` and

    out = floor((n + 2p − d·(k−1) − 1) / s) + 1          (ceil instead of floor when ceil_mode)

With ceil_mode, PyTorch drops a last window that would start entirely inside the right padding; we do the same.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent covered by a dilated kernel: d·(k−1)+1."""
    return dilation * (kernel - 1) + 1


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a convolution or pooling window along one dimension.

    ``padding`` is either symmetric (an int) or a ``(before, after)`` pair.
    """
    if kernel < 1 or stride < 1 or dilation < 1:
        raise ValueError(f"kernel, stride and dilation must be >= 1, got {kernel}, {stride}, {dilation}")
    before, after = (padding, padding) if isinstance(padding, int) else padding
    span = size + before + after - effective_kernel(kernel, dilation)
    if span < 0:
        raise ValueError(
            f"input of size {size} (padded {size + before + after}) is smaller than the kernel extent "
            f"{effective_kernel(kernel, dilation)}"
        )
    if not ceil_mode:
        return span // stride + 1
    out = math.ceil(span / stride) + 1
    # PyTorch: the last window must start inside the input or the left padding.
    if (out - 1) * stride >= size + before:
        out -= 1
    return out


def same_padding(kernel: int, stride: int = 1, dilation: int = 1, size: int | None = None) -> tuple[int, int]:
    """(before, after) padding so that out = ceil(size / stride), TensorFlow's "SAME".

    Without ``size`` the stride-1 rule is used (total = d·(k−1)); an odd total puts the extra pixel after, as
    TensorFlow and ONNX ``SAME_UPPER`` do.
    """
    extent = effective_kernel(kernel, dilation)
    if size is None or stride == 1:
        total = extent - 1
    else:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def symmetric_padding(kernel: int, dilation: int = 1) -> int:
    """Padding that keeps the size at stride 1 for odd kernels: d·(k−1)/2 (3×3 → 1, 7×7 → 3)."""
    return dilation * (kernel - 1) // 2


@dataclass(frozen=True)
class Window:
    """One layer's sliding window along a dimension, as the receptive-field recurrence needs it."""

    kernel: int
    stride: int = 1
    dilation: int = 1


def receptive_field(windows: Iterable[Window]) -> tuple[int, int]:
    """Receptive field and jump (effective stride, in input pixels) after a stack of windows.

        r_out = r_in + (k_eff − 1) · j_in        j_out = j_in · s

    starting from r = 1, j = 1 at the input.
    """
    rf, jump = 1, 1
    for w in windows:
        rf, jump = extend_receptive_field(rf, jump, w)
    return rf, jump


def extend_receptive_field(rf: int, jump: int, window: Window) -> tuple[int, int]:
    """One step of the recurrence in ``receptive_field``: (r, j) before ``window`` → (r, j) after it.

    For a network with branches, apply it along each path; where paths merge (a residual sum), the output
    sees the union of both fields, i.e. the larger one, and the jumps must agree.
    """
    return rf + (effective_kernel(window.kernel, window.dilation) - 1) * jump, jump * window.stride


Pad2d = tuple[tuple[int, int], tuple[int, int]]


def padding_pairs(padding: int | tuple[int, int] | Pad2d) -> Pad2d:
    """Normalise a 2-D padding to ``((top, bottom), (left, right))``.

    Accepts an int (all four sides), ``(ph, pw)`` (symmetric per dimension, PyTorch's convention) or the
    asymmetric ``((top, bottom), (left, right))`` pair itself.
    """
    if isinstance(padding, numbers.Integral):
        p = int(padding)
        pairs: Pad2d = ((p, p), (p, p))
    elif len(padding) == 2 and all(isinstance(p, numbers.Integral) for p in padding):
        ph, pw = (int(p) for p in padding)  # type: ignore[union-attr]
        pairs = ((ph, ph), (pw, pw))
    elif len(padding) == 2 and all(isinstance(p, tuple | list) and len(p) == 2 for p in padding):
        (top, bottom), (left, right) = padding  # type: ignore[misc]
        pairs = ((int(top), int(bottom)), (int(left), int(right)))
    else:
        raise ValueError(f"padding must be an int, (ph, pw) or ((top, bottom), (left, right)), got {padding!r}")
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pairs


IntPair = int | tuple[int, int]
Padding = int | tuple[int, int] | Pad2d | str


def pair(value: IntPair, name: str = "value") -> tuple[int, int]:
    """``k`` → ``(k, k)``; a pair is returned as a tuple of ints."""
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])


def resolve_padding(padding: Padding, kernel: tuple[int, int], dilation: tuple[int, int],
                    stride: tuple[int, int] = (1, 1)) -> Pad2d:
    """Any accepted padding form (int, (ph, pw), ((top, bottom), (left, right)), "same", "valid") as pairs."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            # PyTorch allows "same" only at stride 1, where the total padding is d·(k−1), the extra pixel after.
            if stride != (1, 1):
                raise ValueError("padding='same' is only defined for stride 1")
            return same_padding(kernel[0], 1, dilation[0]), same_padding(kernel[1], 1, dilation[1])
        raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
    return padding_pairs(padding)


def pool_output_size(
    size: int,
    kernel: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a max/avg pooling window along one dimension, with PyTorch's legality rules.

    Same formula as ``conv_output_size``, but pooling follows ``pooling_output_shape`` in ATen: the stride
    defaults to the kernel, the padding may be at most half the kernel, and in ceil_mode a window may hang over
    the end of a too-small input as long as one window remains (AvgPool2d(2, ceil_mode=True) maps 1 → 1, where a
    convolution would refuse).
    """
    stride = kernel if stride is None else stride
    if kernel < 1 or stride < 1 or dilation < 1:
        raise ValueError(f"kernel, stride and dilation must be >= 1, got {kernel}, {stride}, {dilation}")
    if padding < 0 or padding > kernel // 2:
        raise ValueError(f"pooling padding must be between 0 and kernel // 2 = {kernel // 2}, got {padding}")
    span = size + 2 * padding - effective_kernel(kernel, dilation)
    # Floor division rounds towards −∞ as ATen's div_rtn does, so a negative span gives out <= 0.
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    if out < 1:
        raise ValueError(
            f"input of size {size} is too small for a pooling window of {kernel} (dilation {dilation}, "
            f"padding {padding})"
        )
    return out


def adaptive_pool_bins(size: int, out: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each output cell of an adaptive pooling layer: floor(i·n/o) to ceil((i+1)·n/o).

    Neighbouring bins overlap when ``out`` does not divide ``size``, exactly as PyTorch's AdaptiveAvgPool2d.
    """
    if size < 1 or out < 1:
        raise ValueError(f"adaptive pooling needs size >= 1 and out >= 1, got {size}, {out}")
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]
