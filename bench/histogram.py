"""Prometheus histograms from /metrics text: the difference over a benchmark window, mean and bucket quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bound -> count), sum and count of one histogram series (or their sum)."""

    buckets: dict[float, float]
    total: float
    count: float

    @classmethod
    def parse(cls, text: str, name: str, labels: Mapping[str, str] | None = None) -> Histogram:
        """The histogram ``name`` in /metrics ``text``, summed over series whose labels include ``labels``."""
        buckets: dict[float, float] = {}
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith(name):
                    continue
                if any(sample.labels.get(k) != v for k, v in (labels or {}).items()):
                    continue
                suffix = sample.name[len(name):]
                if suffix == "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif suffix == "_sum":
                    total += sample.value
                elif suffix == "_count":
                    count += sample.value
        return cls(buckets, total, count)

    def minus(self, before: Histogram) -> Histogram:
        """What was observed between ``before`` and this one."""
        return Histogram({b: c - before.buckets.get(b, 0.0) for b, c in self.buckets.items()},
                         self.total - before.total, self.count - before.count)

    @property
    def mean(self) -> float:
        """The mean observation (0 with no observations)."""
        return self.total / self.count if self.count else 0.0

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (``inf`` past the last finite bucket)."""
        if not self.count:
            return 0.0
        wanted = math.ceil(q * self.count)
        for bound in sorted(self.buckets):
            if self.buckets[bound] >= wanted:
                return bound
        return math.inf
