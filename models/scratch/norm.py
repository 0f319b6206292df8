"""Batch normalisation (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift"), with PyTorch's exact running-statistics rules.

For each channel c, over every other axis (N for (N, C); N and L for (N, C, L); N, H, W for (N, C, H, W)):

    y = γ_c · (x − μ_c) / sqrt(σ²_c + ε) + β_c

- training mode: μ, σ² are the batch mean and the *biased* variance (divide by n), and the running estimates move
  towards the batch with ``running = (1 − momentum) · running + momentum · batch``, where the variance fed to the
  running estimate is the *unbiased* one, σ²·n/(n−1) (``torch.nn.BatchNorm2d`` documentation). With
  ``momentum=None`` PyTorch uses a cumulative average instead: momentum = 1 / num_batches_tracked.
- eval mode: μ, σ² are the running estimates; the layer is then an affine map per channel, which is what lets the
  exporter fold it into the neighbouring convolution or linear layer (``models.scratch.fold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchNorm", "batch_norm", "batch_norm1d", "batch_norm2d", "bn_scale_shift"]


def bn_scale_shift(gamma: np.ndarray | None, beta: np.ndarray | None, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BN with fixed statistics as a per-channel affine map, BN(z) = scale·z + shift, computed in float64:

        scale = γ / sqrt(σ² + ε),   shift = β − μ · scale

    ``None`` for γ or β (``affine=False``) means 1 or 0. Every BN in ``models.scratch`` (the functional form,
    the eval-mode layer, the folding) computes its scale and shift here.
    """
    scale = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    if gamma is not None:
        scale = scale * np.asarray(gamma, dtype=np.float64)
    shift = -np.asarray(mean, dtype=np.float64) * scale
    if beta is not None:
        shift = shift + np.asarray(beta, dtype=np.float64)
    return scale, shift


def batch_norm(
    x: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
) -> np.ndarray:
    """Functional batch norm over any layout, like ``F.batch_norm``.

    In training mode ``running_mean``/``running_var`` (if given) are updated in place, as PyTorch does.
    """
    n_ch = x.shape[channel_axis]
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    bshape = [1] * x.ndim
    bshape[channel_axis] = n_ch
    if training:
        count = x.size // n_ch
        if count < 2:
            raise ValueError(f"batch norm needs more than 1 value per channel in training mode, got input {x.shape}")
        # Statistics in float64: a float32 sum over a large batch loses digits the 1e-5 comparison needs.
        mean64 = x.mean(axis=axes, dtype=np.float64)
        var64 = x.var(axis=axes, dtype=np.float64)
        if running_mean is not None and running_var is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean64
            running_var *= 1.0 - momentum
            running_var += momentum * var64 * count / (count - 1)
        mean, var = mean64, var64
    else:
        if running_mean is None or running_var is None:
            raise ValueError("eval-mode batch norm needs running_mean and running_var")
        mean, var = running_mean, running_var
    scale, shift = bn_scale_shift(weight, bias, mean, var, eps)
    return (x * scale.reshape(bshape).astype(x.dtype) + shift.reshape(bshape).astype(x.dtype)).astype(x.dtype)


def batch_norm2d(x: np.ndarray, *args: np.ndarray | None, **kwargs: float | bool) -> np.ndarray:
    """``batch_norm`` for (N, C, H, W) inputs; same arguments."""
    if x.ndim != 4:
        raise ValueError(f"batch_norm2d expects (N, C, H, W), got shape {x.shape}")
    return batch_norm(x, *args, **kwargs)  # type: ignore[arg-type]


def batch_norm1d(x: np.ndarray, *args: np.ndarray | None, **kwargs: float | bool) -> np.ndarray:
    """``batch_norm`` for (N, C) or (N, C, L) inputs; same arguments."""
    if x.ndim not in (2, 3):
        raise ValueError(f"batch_norm1d expects (N, C) or (N, C, L), got shape {x.shape}")
    return batch_norm(x, *args, **kwargs)  # type: ignore[arg-type]


@dataclass
class BatchNorm:
    """A BatchNorm layer with its state, like ``nn.BatchNorm1d/2d`` (``momentum=None``: cumulative average)."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    running_mean: np.ndarray
    running_var: np.ndarray
    eps: float = 1e-5
    momentum: float | None = 0.1
    num_batches_tracked: int = 0
    channel_axis: int = 1

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], prefix: str, eps: float = 1e-5,
                        dtype: type = np.float32, channel_axis: int = 1) -> BatchNorm:
        """Read ``{prefix}weight``, ``bias``, ``running_mean``, ``running_var`` (torch's key names)."""
        weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
        tracked = state.get(prefix + "num_batches_tracked")
        return cls(
            weight=None if weight is None else np.array(weight, dtype=dtype),
            bias=None if bias is None else np.array(bias, dtype=dtype),
            running_mean=np.array(state[prefix + "running_mean"], dtype=dtype),
            running_var=np.array(state[prefix + "running_var"], dtype=dtype),
            eps=eps,
            num_batches_tracked=0 if tracked is None else int(np.asarray(tracked)),
            channel_axis=channel_axis,
        )

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode layer as y = x·scale + shift, per channel (float64, ``bn_scale_shift``)."""
        return bn_scale_shift(self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        momentum = self.momentum
        if training:
            self.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / self.num_batches_tracked
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=training,
                          momentum=momentum if momentum is not None else 0.0, eps=self.eps,
                          channel_axis=self.channel_axis)
