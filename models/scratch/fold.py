"""Folding an eval-mode BatchNorm into the neighbouring convolution or linear layer.

In eval mode BatchNorm is an affine map per channel (``models.scratch.norm.bn_scale_shift``):

    BN(z)_c = γ_c · (z_c − μ_c) / sqrt(σ²_c + ε) + β_c = a_c · z_c + t_c,
    a_c = γ_c / sqrt(σ²_c + ε),   t_c = β_c − a_c · μ_c

Conv (or Linear) then BN — z = W ∗ x + b, per output channel c:

    BN(z)_c = a_c · (W_c ∗ x + b_c) + t_c = (a_c W_c) ∗ x + (a_c (b_c − μ_c) + β_c)
    ⇒ W'_c = a_c · W_c,   b'_c = a_c · (b_c − μ_c) + β_c                        (``fold_conv_bn``, ``fold_linear_bn``)

BN1d then Linear (fastai's head: BatchNorm1d → Dropout → Linear; dropout is the identity in eval mode),
y = W · BN(x) + b = W · (a ⊙ x + t) + b:

    ⇒ W' = W · diag(a)  (column j scaled by a_j),   b' = b + W · t                  (``fold_bn_linear``)

BN then Conv cannot be folded exactly when the convolution zero-pads (the padding would have to be −t/a), which
is why only these patterns exist. Reference: Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", §3.2 (batch-norm folding).
"""

from __future__ import annotations

import numpy as np

from models.scratch.norm import bn_scale_shift

__all__ = ["fold_bn_linear", "fold_conv_bn", "fold_linear_bn"]


def fold_conv_bn(w: np.ndarray, b: np.ndarray | None, gamma: np.ndarray | None, beta: np.ndarray | None,
                 mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Conv (weight (O, …), optional bias) followed by BN over its O channels → one conv with a bias."""
    a, t = bn_scale_shift(gamma, beta, mean, var, eps)
    if w.shape[0] != a.shape[0]:
        raise ValueError(f"weight has {w.shape[0]} output channels, batch norm has {a.shape[0]}")
    w64 = np.asarray(w, dtype=np.float64)
    b64 = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    w_folded = w64 * a.reshape(-1, *([1] * (w.ndim - 1)))
    b_folded = a * b64 + t  # = a·(b − μ) + β
    return w_folded.astype(w.dtype), b_folded.astype(w.dtype)


def fold_linear_bn(w: np.ndarray, b: np.ndarray | None, gamma: np.ndarray | None, beta: np.ndarray | None,
                   mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Linear (weight (out, in)) followed by BatchNorm1d over its outputs: the same algebra as a 1×1 conv."""
    if w.ndim != 2:
        raise ValueError(f"linear weight must be (out, in), got {w.shape}")
    return fold_conv_bn(w, b, gamma, beta, mean, var, eps)


def fold_bn_linear(gamma: np.ndarray | None, beta: np.ndarray | None, mean: np.ndarray, var: np.ndarray, eps: float,
                   w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm1d over the inputs of a Linear (weight (out, in)) → one Linear."""
    a, t = bn_scale_shift(gamma, beta, mean, var, eps)
    if w.ndim != 2 or w.shape[1] != a.shape[0]:
        raise ValueError(f"linear weight {w.shape} does not take the {a.shape[0]} batch-norm features")
    w64 = np.asarray(w, dtype=np.float64)
    b64 = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    return (w64 * a[None, :]).astype(w.dtype), (b64 + w64 @ t).astype(w.dtype)
