"""What every NumPy network shares: NCHW in, logits out, in batch chunks that bound memory.

A network is a body (stem + stages, channels-last) and a head (``models.scratch.heads``: global average pool →
linear, or fastai's create_head). ``forward``
converts the NCHW float32 input to NHWC once, and runs it in chunks whose size comes from the layers' own
shape arithmetic (``scratch`` elements per sample, see ``models.scratch.layers``), so that a batch of thousands
of images needs no more memory than ``max_bytes`` plus the logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.scratch.heads import Head
from models.scratch.layers import Sequential
from models.scratch.layout import to_nhwc

__all__ = ["DEFAULT_MAX_BYTES", "Network"]

DEFAULT_MAX_BYTES = 256 * 2**20


class Network:
    """body (NHWC) → head."""

    def __init__(self, body: Sequential, head: Head, config: dict[str, Any], dtype: type = np.float32) -> None:
        self.body, self.head, self.config, self.dtype = body, head, dict(config), dtype
        self.in_chans = int(config["in_chans"])
        self.num_classes = head.num_classes

    def forward_features(self, x_nhwc: np.ndarray) -> np.ndarray:
        """Body on a channels-last batch: (N, H, W, C_in) → (N, h, w, C_features)."""
        return self.body(x_nhwc)

    def forward_head(self, features_nhwc: np.ndarray) -> np.ndarray:
        return self.head(features_nhwc)

    def batch_size_for(self, height: int, width: int, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
        """Largest chunk whose intermediate arrays fit in ``max_bytes`` (at least 1)."""
        per_sample = self.body.scratch((height, width, self.in_chans)) * np.dtype(self.dtype).itemsize
        return max(1, int(max_bytes // max(per_sample, 1)))

    def forward(self, x: np.ndarray, batch_size: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                ) -> np.ndarray:
        """Logits (N, num_classes) for a float NCHW batch, computed ``batch_size`` samples at a time."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (N, {self.in_chans}, H, W), got shape {x.shape}")
        if batch_size is None:
            batch_size = self.batch_size_for(x.shape[2], x.shape[3], max_bytes)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((x.shape[0], self.num_classes), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            chunk = to_nhwc(x[start : start + batch_size].astype(self.dtype, copy=False))
            out[start : start + batch_size] = self.forward_head(self.forward_features(chunk))
        return out

    __call__ = forward
