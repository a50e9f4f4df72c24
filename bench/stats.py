"""Summaries of timing samples: nearest-rank percentiles, pure and deterministic.

Nearest rank (no interpolation): the p-th percentile of n sorted samples is the sample at rank ceil(p/100 * n),
so every reported percentile is a value that was actually measured. With 20 samples p95 is the 19th; with 500
samples p99 is the 495th.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

METHOD = "nearest-rank (the sample at rank ceil(p/100*n) of the sorted samples; no interpolation)"


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0 < p <= 100) of ``samples`` by the nearest-rank method."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    ordered = sorted(samples)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Summary:
    """n, min, p50, p95, p99, max and mean of a list of samples (same unit as the samples)."""

    n: int
    min: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON form, values rounded to ``digits`` decimals."""
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples: Sequence[float]) -> Summary:
    """Summarize a non-empty list of samples."""
    if not samples:
        raise ValueError("summary of no samples")
    return Summary(n=len(samples), min=min(samples), p50=percentile(samples, 50), p95=percentile(samples, 95),
                   p99=percentile(samples, 99), max=max(samples), mean=sum(samples) / len(samples))
