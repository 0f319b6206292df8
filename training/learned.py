"""Whether a model learned anything: its validation accuracy against always answering the most common class.

A model that predicts the majority class for every image scores the majority rate ``p``; a validation set of ``n``
images measures that rate with a standard error of ``sqrt(p (1 - p) / n)``. A model has *learned* when its accuracy
is at least :data:`MARGIN_POINTS` points and two standard errors above ``p`` — on a small set the second is the
larger bar (80 images at p = 0.525: 11.2 points). The trainer records the verdict in metrics.json and says when a
model has not learned; ``export`` refuses to publish such a model unless asked to (``--allow-unlearned``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MARGIN_POINTS = 5.0


@dataclass(frozen=True)
class Learned:
    accuracy: float
    majority_rate: float
    majority_class: int
    samples: int

    @property
    def standard_error(self) -> float:
        p = self.majority_rate
        return math.sqrt(p * (1 - p) / self.samples) if self.samples else 0.0

    @property
    def threshold(self) -> float:
        """The accuracy a model must reach to count as having learned."""
        return self.majority_rate + max(MARGIN_POINTS / 100, 2 * self.standard_error)

    @property
    def learned(self) -> bool:
        return self.accuracy >= self.threshold - 1e-9  # 0.1 + 0.05 is 0.15000000000000002 in floats

    def why_not(self) -> str:
        """One line: why this model does not count as having learned."""
        return (f"validation accuracy {self.accuracy:.4f} is not {MARGIN_POINTS:g} points and two standard errors "
                f"above the majority-class rate {self.majority_rate:.4f} (class {self.majority_class}, "
                f"{self.samples} validation images): it needs {min(self.threshold, 1.0):.4f}"
                + (" — this validation set holds one class only, so it cannot show learning"
                   if self.majority_rate >= 1.0 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"learned": self.learned, "accuracy": self.accuracy, "majority_rate": self.majority_rate,
                "majority_class": self.majority_class, "samples": self.samples,
                "standard_error": round(self.standard_error, 6), "threshold": round(self.threshold, 6),
                "margin_points": MARGIN_POINTS}


def judge(accuracy: float, class_counts: Sequence[int]) -> Learned:
    """The verdict for ``accuracy`` on a validation set holding ``class_counts[k]`` images of class k."""
    samples = int(sum(class_counts))
    majority = max(range(len(class_counts)), key=lambda k: class_counts[k]) if class_counts else 0
    rate = class_counts[majority] / samples if samples else 0.0
    return Learned(float(accuracy), float(rate), majority, samples)
