"""2-D convolution (cross-correlation, as every deep-learning framework means it) in plain NumPy.

Two implementations of the same definition:

- ``conv2d_naive`` — nested loops that read like the formula below; slow, used only to check the fast one;
- ``conv2d`` — im2col: every receptive window is gathered (through a strided *view*, no copy, thanks to
  ``numpy.lib.stride_tricks.sliding_window_view``) into the rows of one matrix, and the convolution becomes one
  matrix product per group, which BLAS does at full speed (Chellapilla et al. 2006, "High Performance
  Convolutional Neural Networks for Document Processing"; the cs231n notes, "Convolutional Networks").
  The work is done channels-last (``conv2d_nhwc``, see ``models.scratch.layout``) and in cache-sized tiles of
  output pixels; ``conv2d`` wraps it for NCHW arrays, like ``F.conv2d``.

For input x (N, C, H, W), weight w (O, C/g, kh, kw), ``g`` groups, stride s, dilation d and zero padding:

    out[n, o, y, x] = b[o] + Σ_{c, i, j} x_pad[n, G(o)·C/g + c, y·s_h + i·d_h, x·s_w + j·d_w] · w[o, c, i, j]

where G(o) = o // (O/g) is the group of output channel o. The output size along each dimension comes from
``models.shapes.conv_output_size``. Reference: PyTorch's ``torch.nn.Conv2d`` documentation (shape formula,
``groups``, ``dilation``); Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep learning".
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.scratch.layout import to_nchw, to_nhwc
from models.shapes import IntPair, Pad2d, Padding, conv_output_size, pair, resolve_padding

__all__ = ["conv2d", "conv2d_naive", "conv2d_nhwc", "pad2d", "resolve_padding", "windows2d"]


def pad2d(x: np.ndarray, pads: Pad2d, value: float = 0.0, channels_last: bool = False) -> np.ndarray:
    """Pad the two spatial axes (H, W) of an NCHW (or NHWC) array by ``((top, bottom), (left, right))``."""
    if pads == ((0, 0), (0, 0)):
        return x
    widths = ((0, 0), *pads, (0, 0)) if channels_last else ((0, 0), (0, 0), *pads)
    return np.pad(x, widths, mode="constant", constant_values=value)


def windows2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
              out_hw: tuple[int, int], channels_last: bool = False) -> np.ndarray:
    """View of every (dilated) window of an already padded array; no data copied.

    NCHW in → (N, C, Ho, Wo, kh, kw); NHWC in → (N, Ho, Wo, C, kh, kw).
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    extent = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    axes = (1, 2) if channels_last else (2, 3)
    view = sliding_window_view(x, extent, axis=axes)
    # Keep every s-th window start and every d-th tap inside a window; crop to the formula's output size.
    rows, cols = slice(None, (ho - 1) * sh + 1, sh), slice(None, (wo - 1) * sw + 1, sw)
    if channels_last:
        return view[:, rows, cols, :, ::dh, ::dw]
    return view[:, :, rows, cols, ::dh, ::dw]


def _check(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, groups: int) -> None:
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d expects x (N, C, H, W) and weight (O, C/groups, kh, kw), got {x.shape}, "
                         f"{weight.shape}")
    if groups < 1 or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"channels do not fit groups={groups}: input has {x.shape[1]} channels, weight "
                         f"{weight.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {bias.shape}")


def _geometry(hw: tuple[int, ...], weight: np.ndarray, stride: IntPair, padding: Padding, dilation: IntPair,
              ) -> tuple[tuple[int, int], tuple[int, int], Pad2d, tuple[int, int]]:
    kernel = (weight.shape[2], weight.shape[3])
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_padding(padding, kernel, d, s)
    out_hw = (
        conv_output_size(hw[0], kernel[0], s[0], pads[0], d[0]),
        conv_output_size(hw[1], kernel[1], s[1], pads[1], d[1]),
    )
    return s, d, pads, out_hw


def conv2d_naive(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: IntPair = 1,
                 padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> np.ndarray:
    """The definition, one multiply-add at a time (accumulated in float64); for tests on tiny inputs only."""
    _check(x, weight, bias, groups)
    (sh, sw), (dh, dw), pads, (ho, wo) = _geometry(x.shape[2:], weight, stride, padding, dilation)
    xp = pad2d(x, pads)
    n_batch, out_ch = x.shape[0], weight.shape[0]
    c_per_group, kh, kw = weight.shape[1:]
    o_per_group = out_ch // groups
    out = np.zeros((n_batch, out_ch, ho, wo), dtype=np.result_type(x, weight))
    for n in range(n_batch):
        for o in range(out_ch):
            first_c = (o // o_per_group) * c_per_group
            for y in range(ho):
                for x_ in range(wo):
                    acc = float(bias[o]) if bias is not None else 0.0
                    for c in range(c_per_group):
                        for i in range(kh):
                            for j in range(kw):
                                acc += float(xp[n, first_c + c, y * sh + i * dh, x_ * sw + j * dw]) * float(
                                    weight[o, c, i, j])
                    out[n, o, y, x_] = acc
    return out


# im2col is built and multiplied one cache-sized tile at a time (about 3× faster than one whole-batch matrix).
TILE_BYTES = 512 * 1024


def _tiles(n: int, ho: int, wo: int, row_bytes: int) -> list[tuple[slice, slice]]:
    """(batch slice, output-row slice) pairs covering (n, ho), each at most ~TILE_BYTES of im2col."""
    rows = max(1, TILE_BYTES // row_bytes)  # im2col rows (output pixels) per tile
    if ho * wo <= rows:
        per = rows // (ho * wo)
        return [(slice(i, i + per), slice(None)) for i in range(0, n, per)]
    per_h = max(1, rows // wo)
    return [(slice(i, i + 1), slice(h, h + per_h)) for i in range(n) for h in range(0, ho, per_h)]


def conv2d_nhwc(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: IntPair = 1,
                padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> np.ndarray:
    """``conv2d`` on a channels-last input (N, H, W, C); the weight keeps PyTorch's (O, C/g, kh, kw) layout.

    Returns a C-contiguous (N, Ho, Wo, O) array.
    """
    if x.ndim != 4:
        raise ValueError(f"conv2d_nhwc expects x (N, H, W, C), got shape {x.shape}")
    _check(x.transpose(0, 3, 1, 2), weight, bias, groups)
    stride_hw, dilation_hw, pads, (ho, wo) = _geometry(x.shape[1:3], weight, stride, padding, dilation)
    out_ch, c_per_group, kh, kw = weight.shape
    win = windows2d(pad2d(x, pads, channels_last=True), (kh, kw), stride_hw, dilation_hw, (ho, wo),
                    channels_last=True)
    # im2col rows are output pixels (n, y, x); columns the taps of one window in (i, j, c) order, so each
    # tap copies a contiguous run of channels. The weight is reordered to match: (kh·kw·C/g, O/g) per group.
    win = win.transpose(0, 1, 2, 4, 5, 3)  # (N, Ho, Wo, kh, kw, C)
    o_per_group = out_ch // groups
    w_cols = [
        np.ascontiguousarray(weight[g * o_per_group : (g + 1) * o_per_group].transpose(2, 3, 1, 0)
                             .reshape(-1, o_per_group))
        for g in range(groups)
    ]
    dtype = np.result_type(x, weight)
    out = np.empty((x.shape[0], ho, wo, out_ch), dtype=dtype)
    row_bytes = kh * kw * c_per_group * dtype.itemsize
    for n_sl, h_sl in _tiles(x.shape[0], ho, wo, row_bytes):
        tile = out[n_sl, h_sl]  # a view: the products are written straight into the output
        for g in range(groups):
            cols = win[n_sl, h_sl, ..., g * c_per_group : (g + 1) * c_per_group].reshape(-1, w_cols[g].shape[0])
            tile[..., g * o_per_group : (g + 1) * o_per_group] = (cols @ w_cols[g]).reshape(
                *tile.shape[:3], o_per_group)
        if bias is not None:
            tile += bias
    return out


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: IntPair = 1,
           padding: Padding = 0, dilation: IntPair = 1, groups: int = 1) -> np.ndarray:
    """Vectorised convolution (im2col + one matrix product per group), same arguments as F.conv2d.

    ``padding`` may also be asymmetric, ``((top, bottom), (left, right))``, or "same"/"valid".
    """
    _check(x, weight, bias, groups)
    return to_nchw(conv2d_nhwc(to_nhwc(x), weight, bias, stride, padding, dilation, groups))
