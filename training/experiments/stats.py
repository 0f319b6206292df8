"""Mean ± std over seeds, and an honest verdict on whether a difference between two settings shows.

A difference "shows" when it is larger than the half-width of its 95 % confidence interval (Welch's t: the
difference of means over its standard error, with the Welch–Satterthwaite degrees of freedom). With one seed per
side there is no spread to compare against, and the verdict says so instead of guessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values; std is None below two values."""
    xs = finite(values)
    if not xs:
        return None, None
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def fmt(mean: float | None, std: float | None, digits: int = 4) -> str:
    """'0.9861 ± 0.0042', '0.9861' (one value) or '—' (none): how every table in the reports prints a number."""
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_values(values: Sequence[float | None], digits: int = 4) -> str:
    return fmt(*mean_std(values), digits=digits)


@dataclass
class Comparison:
    """A vs B on one metric over seeds; ``verdict`` is 'shows', 'does not show' or 'cannot tell'."""

    metric: str
    a: str
    b: str
    mean_a: float | None
    mean_b: float | None
    diff: float | None          # mean_a - mean_b
    half_width: float | None    # 95 % confidence half-width of diff (None: not computable)
    n_a: int
    n_b: int
    verdict: str
    detail: str                 # the numbers behind the verdict, in words

    @property
    def text(self) -> str:
        lead = {"shows": "the difference shows", "does not show": "no difference shows on this data",
                "cannot tell": "cannot tell"}[self.verdict]
        return f"{self.metric}: {lead} — {self.detail}."

    def to_json(self) -> dict:
        return {**asdict(self), "text": self.text}


def _t_quantile(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def compare(metric: str, a: str, values_a: Sequence[float | None], b: str, values_b: Sequence[float | None],
            digits: int = 4) -> Comparison:
    """Does ``a`` differ from ``b`` on ``metric`` by more than the seed-to-seed spread allows?"""
    xa, xb = finite(values_a), finite(values_b)
    lost = (len(values_a) - len(xa), len(values_b) - len(xb))
    mean_a, std_a = mean_std(xa)
    mean_b, std_b = mean_std(xb)
    base = dict(metric=metric, a=a, b=b, mean_a=mean_a, mean_b=mean_b, n_a=len(xa), n_b=len(xb))
    if any(lost):
        detail = (f"no value for {lost[0]} of {len(values_a)} run(s) of {a} and {lost[1]} of {len(values_b)} of "
                  f"{b} (diverged, or never reached the target)")
        return Comparison(**base, diff=None, half_width=None, verdict="cannot tell", detail=detail)
    diff = mean_a - mean_b
    numbers = f"{a} {mean_a:.{digits}f} vs {b} {mean_b:.{digits}f}, difference {diff:+.{digits}f}"
    if len(xa) < 2 or len(xb) < 2:
        detail = f"{numbers}; one seed gives no spread to compare with (rerun with --seeds 3 or more)"
        return Comparison(**base, diff=diff, half_width=None, verdict="cannot tell", detail=detail)
    va, vb = std_a**2 / len(xa), std_b**2 / len(xb)
    se = math.sqrt(va + vb)
    if se == 0.0:
        # Every seed gave the same number on both sides: any difference is exact, none is no effect.
        half_width = 0.0
    else:
        df = (va + vb) ** 2 / ((va**2 / (len(xa) - 1) if va else 0.0) + (vb**2 / (len(xb) - 1) if vb else 0.0))
        half_width = _t_quantile(df) * se
    shows = abs(diff) > half_width
    detail = f"{numbers} ± {half_width:.{digits}f} (95 % CI, {len(xa)} vs {len(xb)} seeds)"
    if not shows:
        detail += "; the interval includes 0"
    return Comparison(**base, diff=diff, half_width=half_width, verdict="shows" if shows else "does not show",
                      detail=detail)
