"""How long the daemon took from its process's start to ready, step by step.

A restart's wait is mostly Python's imports, the model load (reading the checkpoint, moving it to
the GPU, choosing the attention kernels, checking our own kernels) and the warm-up render
(compiling, or reading compiled code back, and recording CUDA graphs). Which of them dominates
depends on the machine, so the daemon says it once at ready::

    ready: watching /srv/inbox, 21.7 s after the process started (interpreter and imports 6.2 s,
    model 8.1 s [checkpoint read 0.9 s, attention chosen 2.5 s, ...], warm-up render 6.9 s, ...)

and sets ``fooocusd_start_seconds{step=...}`` where metrics are on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fooocusd.step_timer import StepTimer

SHOWN_FROM_SECONDS = 0.05
"""Steps shorter than this are summed into "other steps" in the log line."""


def process_start_time() -> float | None:
    """When this process started (``time.time()`` scale), from Linux's ``/proc``; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text(encoding="ascii")
        uptime = float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])
        # fields after the command name (which may hold spaces): the start time is field 22
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        booted = time.time() - uptime
        return booted + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StartTimeline(StepTimer):
    """The daemon's start steps, from the process's start where it is known."""

    def __init__(self, origin: float, *, from_process_start: bool) -> None:
        super().__init__(origin)
        self.from_process_start = from_process_start
        self.details: dict[str, dict[str, float]] = {}
        """Sub-steps of a step (the engine's load steps under "model"), for the log line."""

    @classmethod
    def since_process_start(cls, first_step: str = "interpreter and imports") -> StartTimeline:
        """A timeline from the process's start (``/proc``) whose ``first_step`` ends now; from now
        where the start is unknown (or seems later than now, a clock set back)."""
        now = time.time()
        started = process_start_time()
        if started is None or started > now:
            return cls(now, from_process_start=False)
        timeline = cls(started, from_process_start=True)
        timeline.reached(first_step, now)
        return timeline

    @classmethod
    def begin(cls, *, from_process_start: bool) -> StartTimeline:
        """``since_process_start()`` or ``since_now()``."""
        return cls.since_process_start() if from_process_start else cls.since_now()

    @classmethod
    def since_now(cls) -> StartTimeline:
        """A timeline of a daemon started inside a process that was already running (an embedding
        program, a benchmark): its steps from now."""
        return cls(time.time(), from_process_start=False)

    def record(self) -> dict[str, float]:
        """Seconds per step and ``total``."""
        return {**super().record(), "total": round(self.total, 3)}

    def summary(self) -> str:
        """One line: the total, then each step of at least ``SHOWN_FROM_SECONDS``, then the rest."""
        since = "the process started" if self.from_process_start else "the daemon started"
        parts, rest = [], 0.0
        for step, seconds in self.steps.items():
            if seconds < SHOWN_FROM_SECONDS:
                rest += seconds
                continue
            details = self._details(step)
            parts.append(f"{step} {seconds:.1f} s" + (f" [{details}]" if details else ""))
        if rest >= SHOWN_FROM_SECONDS:
            parts.append(f"other steps {rest:.1f} s")
        listed = f" ({', '.join(parts)})" if parts else ""
        return f"{self.total:.1f} s after {since}{listed}"

    def _details(self, step: str) -> str:
        shown = [(name, s) for name, s in self.details.get(step, {}).items() if s >= SHOWN_FROM_SECONDS]
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in shown)
