"""Per-step progress of one batch, for every job the worker holds."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from fooocusd.service.batch_plan import BatchItem
from fooocusd.service.job_prep import PreparedJob

if TYPE_CHECKING:
    from fooocusd.service.worker import Worker

HEARTBEAT_EVERY = 0.5
"""Seconds between journal heartbeats (each renews the lease of every held job)."""


class BatchProgress:
    """Per-step progress of one batch: throttled heartbeats for every held job, terminal progress,
    step events for the batch's jobs, cancel detection."""

    def __init__(self, worker: Worker, items: list[BatchItem]) -> None:
        self.worker = worker
        self.runs = list(dict.fromkeys(item.run for item in items))
        self.images_of = Counter(item.run.job_id for item in items)
        head = self.runs[0]
        self.head = head
        others = len(self.runs) - 1
        self.label = head.label + (f" (+{others} job(s) in the batch)" if others else "")
        self._last = 0.0

    def _done(self, run: PreparedJob, step: int) -> int:
        return run.steps_done + step * self.images_of.get(run.job_id, 0)

    def __call__(self, step: int, steps: int) -> None:
        worker = self.worker
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_EVERY or step == steps:
            self._last = now
            lease = worker.settings.journal.lease_seconds
            for run in [*worker.claimed]:  # waiting jobs keep their lease too
                if not worker.journal.heartbeat(run.job_id, self._done(run, step), run.total_steps, lease):
                    run.cancelled = True
        if worker.progress_sink is not None:
            worker.progress_sink(self.label, self._done(self.head, step), self.head.total_steps)
        for run in self.runs:
            worker.events.on_step(run.job_id, step, steps)

    def all_cancelled(self) -> bool:
        return all(run.cancelled for run in self.runs)

    def should_stop(self) -> bool:
        return self.all_cancelled() or self.worker.stop_now.is_set()
