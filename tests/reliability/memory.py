"""Resident-memory bounds of the reliability tests, each stated as what it allows, so that one rule holds for the
short runs of ``make test`` and the long ones of ``make soak`` alike.

A server process's VmRSS grows in two ways that look alike over a short run and not over a long one:

- high-water marks: glibc's malloc keeps freed memory for reuse, in the arena of the thread that used it. RSS steps
  up when an input needs more than any before it, or lands where the free space is fragmented, then stays; the steps
  grow rarer as inputs go on, and replaying the same inputs adds nothing;
- a leak: something kept per input or per request (a decode, a cache keyed by inputs, a frame held by an error),
  growing linearly with the inputs however long the run.

So each bound is an :class:`Allowance`: a plateau in KiB (the steps) plus a rate in KiB per 10,000 inputs or per
minute (at most a small leak). A short run can only fail a leak larger than its plateau spread over its inputs; a
long run is held to the rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# glibc's malloc with its thresholds fixed at their initial values, for a server whose memory is measured per input:
# a block of 128 KiB or more is then mapped on its own and unmapped when freed, so VmRSS follows what the process
# holds. Left dynamic (the default), the mmap threshold rises to the largest block freed so far (up to 32 MiB) and
# the trim threshold to twice that, and each thread's arena keeps up to that much free memory after the largest
# decodes: over 200,000 damaged images (multi-megapixel ones among them) a server's RSS wandered between 135 and
# 190 MiB, in steps of up to 14 MiB, while malloc's bytes in use stayed at 50 MiB (docs/reliability.md#memory). That
# band hides a leak of up to 1 kB per input from a 50,000-input run. ``MALLOC_MMAP_THRESHOLD_`` is glibc's
# documented variable (mallopt(3)); other C libraries ignore it.
FIXED_MALLOC_THRESHOLDS = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


@dataclass(frozen=True)
class Allowance:
    """Growth of at most ``plateau_kb`` plus ``rate_kb`` for each ``unit`` (10,000 inputs, or a minute)."""

    plateau_kb: float
    rate_kb: float
    unit: str

    def allowed_kb(self, units: float) -> float:
        return self.plateau_kb + self.rate_kb * units

    def __str__(self) -> str:
        return f"{self.plateau_kb / 1024:g} MiB + {self.rate_kb:g} KiB per {self.unit}"


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, KiB) points, in KiB per unit of x."""
    x = np.array([p[0] for p in points], dtype=np.float64)
    kb = np.array([p[1] for p in points], dtype=np.float64)
    return float(np.polyfit(x, kb, 1)[0])
