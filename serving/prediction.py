"""The result type shared by the predictor, the server and the client (no onnxruntime import needed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
