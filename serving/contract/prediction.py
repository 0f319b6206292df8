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


def classification(logits: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """Triton's classification extension: the ``k`` most probable classes of each row of (N, K) logits as
    ``b"probability:index:label"`` (six decimals, as Triton prints a float), row after row: an (N, k) BYTES tensor.
    The score is the softmax probability, not the raw logit Triton would print for a model whose output is logits:
    the answer a reader can weigh, and the one the classifier API gives."""
    return [f"{p.probability:.6f}:{p.index}:{p.label}".encode()
            for row in top_predictions(logits, k, labels) for p in row]
