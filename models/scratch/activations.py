"""Activation and output functions: ReLU, and softmax / log-softmax in their numerically stable form.

softmax(x)_i = exp(x_i) / Σ_j exp(x_j) overflows for logits of a few hundred in float32; subtracting m = max_j x_j
first changes nothing mathematically (the factor exp(−m) cancels) and keeps every exponent ≤ 0:

    softmax(x)_i     = exp(x_i − m) / Σ_j exp(x_j − m)
    log_softmax(x)_i = (x_i − m) − log Σ_j exp(x_j − m)          (the log-sum-exp trick)

Computing log_softmax directly, rather than log(softmax(x)), also avoids log(0) = −∞ for very negative logits.
References: Goodfellow, Bengio & Courville 2016, "Deep Learning", §4.1; ``torch.nn.functional.log_softmax``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "relu", "softmax"]


def relu(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """max(x, 0), elementwise (Nair & Hinton 2010); ``inplace`` overwrites ``x``, like F.relu(inplace=True)."""
    return np.maximum(x, 0, out=x if inplace else None, dtype=x.dtype)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along ``axis``, via the log-sum-exp trick."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / Σ exp(x) along ``axis``, with the maximum subtracted first."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
