"""Logits → answers: the result type and the one softmax → top-k used by the server, the batch CLI and the client.

Pure NumPy (no onnxruntime import), so the client and the batch CLI's output code stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (then float32): stable for any logit range."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z.astype(np.float32)


def top_predictions(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of (N, K) logits, most probable first (ties: lower index first)."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[Prediction(labels[i], int(i), float(row[i])) for i in idx] for row, idx in zip(probs, order, strict=True)]
