"""Fully connected layer and flatten, as ``torch.nn.Linear`` and ``torch.flatten`` define them.

Linear: y = x · Wᵀ + b, with W stored (out_features, in_features) — PyTorch's layout, so a state_dict's
``fc.weight`` is used as is.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flatten", "linear"]


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x (…, in) @ weightᵀ (in, out) + bias (out,)."""
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features, weight is {weight.shape} (out, in)")
    y = x @ weight.T
    return y + bias if bias is not None else y


def flatten(x: np.ndarray, start_dim: int = 1) -> np.ndarray:
    """Merge every axis from ``start_dim`` on into one (C-order, as torch.flatten on a contiguous tensor)."""
    start = start_dim % x.ndim
    return x.reshape(*x.shape[:start], -1)
