"""Memory layouts: NCHW (PyTorch's, the public one) and NHWC ("channels last", the one im2col wants).

Every public layer function takes and returns NCHW like its ``torch.nn.functional`` twin. Internally the
convolution works channels-last: the C values of one pixel are then adjacent in memory, so gathering a window
into an im2col row copies contiguous runs of C floats instead of single floats, and the matrix product already
writes its result in NHWC order (rows = pixels, columns = output channels). The NumPy ResNet converts once at
the input and stays NHWC to the end.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_nchw", "to_nhwc"]


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → contiguous (N, H, W, C)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) → contiguous (N, C, H, W)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
