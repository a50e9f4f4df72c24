"""Figures, their targets and references, the printed table and the results document: pure logic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import METHOD


@dataclass(frozen=True)
class Target:
    """A bound the issue sets: ``value <= limit`` (the only direction the issue uses)."""

    limit: float
    unit: str

    def met(self, value: float) -> bool:
        """Whether ``value`` (in ``unit``) is within the bound."""
        return value <= self.limit

    def text(self) -> str:
        """E.g. ``<= 5 s``."""
        return f"<= {_number(self.limit)} {self.unit}"


@dataclass(frozen=True)
class Reference:
    """A physical reference measured in the same run, e.g. a bare client's create -> watch event latency."""

    what: str
    value: float
    unit: str

    def text(self) -> str:
        """E.g. ``12.3 ms (bare client: create -> watch event)``."""
        return f"{_number(self.value)} {self.unit} ({self.what})"


@dataclass
class Figure:
    """One measured figure with everything needed to judge it."""

    id: str
    title: str
    value: float
    unit: str
    conditions: dict[str, Any]
    target: Target | None = None
    reference: Reference | None = None
    samples: dict[str, Any] = field(default_factory=dict)  # a stats.Summary as dict, or raw numbers
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target."""
        return None if self.target is None else self.target.met(self.value)

    def miss(self) -> str:
        """How far a missed target is off (``+1.2 s (x1.24)``); empty when met or untargeted."""
        if self.target is None or self.met:
            return ""
        over = self.value - self.target.limit
        ratio = f" (x{self.value / self.target.limit:.2f})" if self.target.limit else ""
        return f"+{_number(over)} {self.unit}{ratio}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the figure."""
        return {
            "id": self.id, "title": self.title, "value": round(self.value, 4), "unit": self.unit,
            "target": None if self.target is None else {"op": "<=", "limit": self.target.limit,
                                                        "unit": self.target.unit},
            "met": self.met, "miss": self.miss() or None,
            "reference": None if self.reference is None else {
                "what": self.reference.what, "value": round(self.reference.value, 4), "unit": self.reference.unit},
            "conditions": self.conditions, "samples": self.samples, "notes": self.notes,
        }


def _number(value: float) -> str:
    """Compact rendering: 3 significant digits, no exponent for the ranges benchmarks produce."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def conditions_text(conditions: Mapping[str, Any],
                    keys: Sequence[str] = ("nodes", "profiles", "namespaces", "repetitions", "creates", "rate",
                                           "agents")) -> str:
    """The conditions that matter most, short, for the table."""
    return ", ".join(f"{k}={conditions[k]}" for k in keys if k in conditions)


def table_rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    """Header plus one row per figure: figure, value, target, met, reference, conditions."""
    rows: list[tuple[str, ...]] = [("figure", "value", "target", "met", "reference", "conditions")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else f"NO {f.miss()}")
        rows.append((f.title, f"{_number(f.value)} {f.unit}", f.target.text() if f.target else "-", met,
                     f.reference.text() if f.reference else "-", conditions_text(f.conditions)))
    return rows


def format_table(figures: Sequence[Figure]) -> str:
    """A plain-text table with aligned columns."""
    rows = table_rows(figures)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(figures: Sequence[Figure]) -> str:
    """The same table in Markdown (for the README)."""
    rows = table_rows(figures)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def document(figures: Sequence[Figure], *, mode: str, machine: Mapping[str, Any], started: str, finished: str,
             duration: float, load_note: Mapping[str, Any], notes: Sequence[str] = ()) -> dict[str, Any]:
    """The results.json document."""
    return {"suite": "secprofiles bench (issue 8)", "mode": mode, "started": started, "finished": finished,
            "duration_s": round(duration, 1), "machine": dict(machine), "load_note": dict(load_note),
            "percentile_method": METHOD, "notes": list(notes), "figures": [f.as_dict() for f in figures]}
