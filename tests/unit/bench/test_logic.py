"""The benchmark suite's pure logic: nearest-rank percentiles, targets, the table, histogram windows."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from bench.histogram import Histogram
from bench.report import Figure, Reference, Target, format_table, markdown_table
from bench.stats import percentile, summarize


def test_nearest_rank_percentiles_are_measured_samples(report_figure: Callable[[str], None]) -> None:
    samples = [float(x) for x in range(1, 21)]  # 1..20
    assert percentile(samples, 50) == 10.0  # rank ceil(0.5*20) = 10
    assert percentile(samples, 95) == 19.0  # rank 19
    assert percentile(samples, 100) == 20.0
    assert percentile([3.0], 99) == 3.0
    rng = random.Random(8)
    cases = 0
    for n in (1, 2, 7, 20, 500):
        data = [rng.random() for _ in range(n)]
        for p in (1, 50, 95, 99, 100):
            value = percentile(data, p)
            below = sum(x <= value for x in data)
            assert value in data and below >= math.ceil(p / 100 * n) and below - 1 < math.ceil(p / 100 * n)
            cases += 1
    summary = summarize([5.0, 1.0, 3.0])
    assert (summary.n, summary.min, summary.p50, summary.max, summary.mean) == (3, 1.0, 3.0, 5.0, 3.0)
    report_figure(f"{cases} percentile cases checked against the nearest-rank definition")


@pytest.mark.parametrize("p", [0, -1, 101])
def test_percentile_refuses_nonsense(p: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], p)
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_targets_and_the_table(report_figure: Callable[[str], None]) -> None:
    met = Figure(id="a", title="fast", value=0.5, unit="s", conditions={"nodes": 1, "ignored": "x"},
                 target=Target(1.0, "s"), reference=Reference("bare client", 0.004, "s"))
    missed = Figure(id="b", title="slow", value=7.5, unit="s", conditions={"nodes": 100}, target=Target(5.0, "s"))
    untargeted = Figure(id="c", title="info", value=12.0, unit="MiB", conditions={})
    assert (met.met, missed.met, untargeted.met) == (True, False, None)
    assert missed.miss() == "+2.50 s (x1.50)" and met.miss() == ""
    text = format_table([met, missed, untargeted])
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "value", "target", "met", "reference", "conditions"]
    assert "NO +2.50 s (x1.50)" in lines[3] and "yes" in lines[2] and "nodes=1" in lines[2]
    assert "ignored" not in text and "0.004 s (bare client)" in lines[2]
    assert markdown_table([met]).splitlines()[2].startswith("| fast | 0.5 s | <= 1.00 s | yes |")
    document = missed.as_dict()
    assert document["target"] == {"op": "<=", "limit": 5.0, "unit": "s"} and document["met"] is False
    report_figure(f"{len(lines) - 2} table rows checked")


METRICS = """\
# HELP h_seconds Time
# TYPE h_seconds histogram
h_seconds_bucket{name="a",le="0.001"} {a1}
h_seconds_bucket{name="a",le="0.01"} {a2}
h_seconds_bucket{name="a",le="+Inf"} {a3}
h_seconds_sum{name="a"} {sum}
h_seconds_count{name="a"} {a3}
h_seconds_bucket{name="b",le="0.001"} 100
h_seconds_bucket{name="b",le="0.01"} 100
h_seconds_bucket{name="b",le="+Inf"} 100
h_seconds_sum{name="b"} 0.05
h_seconds_count{name="b"} 100
"""


def _text(a1: int, a2: int, a3: int, total: float) -> str:
    return (METRICS.replace("{a1}", str(a1)).replace("{a2}", str(a2)).replace("{a3}", str(a3))
            .replace("{sum}", str(total)))


def test_histogram_window_mean_and_bucket_quantile() -> None:
    before = Histogram.parse(_text(10, 10, 10, 0.005), "h_seconds", {"name": "a"})
    after = Histogram.parse(_text(60, 109, 110, 0.305), "h_seconds", {"name": "a"})
    window = after.minus(before)
    assert window.count == 100 and window.mean == pytest.approx(0.003)
    assert window.quantile_bound(0.5) == 0.001  # 50 of 100 in the first bucket
    assert window.quantile_bound(0.99) == 0.01
    assert window.quantile_bound(1.0) == math.inf  # one observation past the last finite bucket
    both = Histogram.parse(_text(10, 10, 10, 0.005), "h_seconds")
    assert both.count == 110
    assert Histogram({}, 0.0, 0.0).quantile_bound(0.99) == 0.0
