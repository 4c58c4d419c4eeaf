"""Issue 6's targets against a benchmark report: the best figure of each, the case it came from.

``target_rows(report, sizes)`` reads ``fooocusd_bench.py``'s report (``cases``: name → measures)
and, for each target, takes the lowest value of its measures over the cases that report them (a
latency's median). Memory and the refinements' cost come from the cases that measure exactly that
setting. A target no case has measured yet is left out: the table shows what a run decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """The image sizes and steps of the run (1024²/30 and 512²/20 at full size)."""

    big: int
    steps: int
    small: int
    small_steps: int


@dataclass(frozen=True)
class Target:
    what: str
    limit: float
    unit: str
    measures: tuple[str, ...]
    """Measure names, with ``{big}``, ``{steps}``, ``{small}``, ``{small_steps}`` filled in per run."""
    cases: tuple[str, ...] = ()
    """Only these cases count (empty: every case that reports a measure)."""


TARGETS = (
    Target(
        "one {big}² image, {steps} steps",
        0.90,
        "s",
        (
            "latency_{big}_{steps}_alone_s",
            "latency_{big}_{steps}_s",
            "latency_{big}_{steps}_refinements_on_s",
        ),
    ),
    Target("a queue of {big}² jobs, per image", 0.75, "s", ("steady_s_per_image",)),
    Target("one {small}² image, {small_steps} steps", 0.30, "s", ("latency_{small}_{small_steps}_s",)),
    Target("peak GPU memory, one {big}² job, everything resident", 9.0, "GiB", ("peak_gib",), ("defaults",)),
    Target("peak GPU memory, low-VRAM mode", 4.0, "GiB", ("peak_gib",), ("low_vram",)),
    Target(
        "process start to ready, compiled artefacts on disk",
        30.0,
        "s",
        ("process_start_to_ready_s",),
        ("warm_start",),
    ),
    Target("cost of sharpness, adaptive CFG and ADM", 5.0, "%", ("refinement_cost_pct",), ("defaults",)),
    # The one target for Fooocus's refinements: this row and the one above together.
    Target(
        'cost of "Fooocus V2" expansion in a queue', 5.0, "%", ("expansion_cost_pct",), ("queue_expansion",)
    ),
)


@dataclass(frozen=True)
class TargetRow:
    what: str
    value: float
    unit: str
    limit: float
    case: str

    @property
    def met(self) -> bool:
        return self.value <= self.limit

    def record(self) -> dict[str, Any]:
        return {
            "target": self.what,
            "best": self.value,
            "unit": self.unit,
            "limit": self.limit,
            "case": self.case,
            "met": self.met,
        }


def target_rows(report: dict[str, Any], sizes: Sizes) -> list[TargetRow]:
    """One row per target some case measured: the lowest value and where it came from."""
    names = {"big": sizes.big, "steps": sizes.steps, "small": sizes.small, "small_steps": sizes.small_steps}
    rows = []
    for target in TARGETS:
        measures = {measure.format(**names) for measure in target.measures}
        found = [
            (value, case)
            for case, values in report.get("cases", {}).items()
            if not target.cases or case in target.cases
            for value in _values(values, measures)
        ]
        if found:
            value, case = min(found)
            rows.append(TargetRow(target.what.format(**names), value, target.unit, target.limit, case))
    return rows


def _values(values: dict[str, Any], measures: Iterable[str]) -> list[float]:
    found = []
    for measure in measures:
        value = values.get(measure)
        if isinstance(value, dict):
            value = value.get("median")
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append(float(value))
    return found


def targets_markdown(rows: list[TargetRow]) -> list[str]:
    """The rows as a Markdown table (no lines when nothing was measured)."""
    if not rows:
        return []
    lines = [
        "",
        "## Against issue 6's targets",
        "",
        "| target | best | case | limit | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.what} | {row.value:.4g} {row.unit} | {row.case} | ≤ {row.limit:g} {row.unit} | "
            f"{'yes' if row.met else 'no'} |"
        )
    return lines
