"""Seconds per step of a sequence (a start, a model load), each step from the end of the one before."""

from __future__ import annotations

import time

UNSHOWN_REST = 0.001
"""What the parts of an ``expanded`` step leave of it is kept from this many seconds."""


class StepTimer:
    """Wall-clock seconds per named step since ``origin`` (``time.time()`` scale; now by default)."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.time() if origin is None else origin
        self.steps: dict[str, float] = {}
        self._mark = self.origin

    def reached(self, step: str, now: float | None = None) -> float:
        """End ``step`` now; its seconds (added to an earlier step of the same name)."""
        now = time.time() if now is None else now
        seconds = max(0.0, now - self._mark)
        self.steps[step] = self.steps.get(step, 0.0) + seconds
        self._mark = now
        return seconds

    @property
    def total(self) -> float:
        return self._mark - self.origin

    def record(self) -> dict[str, float]:
        """Seconds per step, rounded to milliseconds, for reports and metrics."""
        return {step: round(seconds, 3) for step, seconds in self.steps.items()}


def expanded(steps: dict[str, float], step: str, parts: dict[str, float]) -> dict[str, float]:
    """``steps`` with ``step`` replaced, in place, by its ``parts``; what the parts leave of it
    (``UNSHOWN_REST`` or more) stays under its own name."""
    result: dict[str, float] = {}
    for name, seconds in steps.items():
        if name != step:
            result[name] = seconds
            continue
        result.update(parts)
        if (rest := seconds - sum(parts.values())) >= UNSHOWN_REST:
            result[name] = rest
    return result
