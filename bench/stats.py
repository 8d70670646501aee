"""Small statistics over samples: percentiles and ratios, as plain numbers for the report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the two nearest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, min, max and mean of ``samples``."""
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "min": min(samples) if samples else math.nan,
        "max": max(samples) if samples else math.nan,
        "mean": sum(samples) / len(samples) if samples else math.nan,
    }


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline; None when the baseline is zero (nothing to divide by)."""
    if not baseline:
        return None
    return value / baseline
