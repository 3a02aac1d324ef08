"""The figures a run produces: each printed as a table row when measured, all written to
``bench/results.json`` at the end (a list of ``{"name", "value", "unit", "target", "met", "scenario"}``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str | None
    met: bool | None
    scenario: str


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        scenario: str,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
    ) -> None:
        """Record a figure (rounded to 3 decimals) with its target and verdict, and print its table row."""
        target: str | None = None
        met: bool | None = None
        if at_most is not None:
            target = f"<= {at_most:g}"
            met = value is not None and value <= at_most
        elif at_least is not None:
            target = f">= {at_least:g}"
            met = value is not None and value >= at_least
        rounded = None if value is None else round(value, 3)
        self.figures.append(Figure(name, rounded, unit, target, met, scenario))
        shown = "n/a" if rounded is None else f"{rounded:g}"
        verdict = "" if met is None else ("  met" if met else "  NOT MET")
        print(f"  {name:<42} {shown:>12} {unit:<10} {target or '':<10}{verdict}  [{scenario}]", flush=True)

    def value(self, name: str) -> float | None:
        """The value of the last figure of this name, None when none was measured."""
        return next((f.value for f in reversed(self.figures) if f.name == name), None)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  ! {text}", flush=True)

    def missed(self) -> list[str]:
        """The names of the figures whose target was not met."""
        return [f.name for f in self.figures if f.met is False]

    def exit_status(self, check: bool) -> int:
        """The run's exit status: 1 under ``--check`` when a figure missed its goal, else 0."""
        return 1 if check and self.missed() else 0


def write_results(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(f) for f in report.figures], indent=2) + "\n")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100): the smallest value with at least p % of the
    values at or below it, i.e. the ceil(p/100 * n)-th smallest. None for no values. The one definition the
    benchmark and the soak share (at n = 100 the 99th percentile is the 99th value, not the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    # Rounded before ceil: 0.95 * 60 is 57.00000000000001 in binary floating point, and must give 57.
    rank = math.ceil(round(p * len(ordered) / 100, 9))
    return ordered[max(1, min(len(ordered), rank)) - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def throughput(receipts: Sequence[tuple[float, float]]) -> float | None:
    """Receipts per second over the span from the first frame written to the last receipt."""
    if len(receipts) < 2:
        return None
    span = max(r for _, r in receipts) - min(w for w, _ in receipts)
    return len(receipts) / span if span > 0 else None


def round_trips(receipts: Sequence[tuple[float, float]]) -> list[float]:
    """Seconds from each frame written to its receipt."""
    return [r - w for w, r in receipts]
