"""What the GPU worker tells observers (metrics, post-job hooks) while it works.

Observers run on the worker thread, between denoising steps: they must only record or enqueue,
never block. ``WorkerEventFanOut`` shields the worker from an observer that raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from loguru import logger

from fooocusd.engine.base import GeneratedImage
from fooocusd.journal.rows import JobRow


class WorkerEvents(Protocol):
    def on_job_started(self, job: JobRow) -> None:
        """The worker claimed ``job`` (its row as claimed: ``started`` is set)."""

    def on_step(self, job_id: int, step: int, total_steps: int) -> None:
        """Denoising step ``step`` of ``total_steps`` of the current image finished."""

    def on_image_done(self, job_id: int, image: GeneratedImage, output: Path) -> None:
        """An image and its sidecar are published at ``output``."""

    def on_job_finished(self, job_id: int, state: str, error: str | None) -> None:
        """A job ended for good: ``state`` is 'done' (all outputs written) or 'failed'."""


class NoWorkerEvents:
    """Observes nothing; the worker's default."""

    def on_job_started(self, job: JobRow) -> None:
        pass

    def on_step(self, job_id: int, step: int, total_steps: int) -> None:
        pass

    def on_image_done(self, job_id: int, image: GeneratedImage, output: Path) -> None:
        pass

    def on_job_finished(self, job_id: int, state: str, error: str | None) -> None:
        pass


class WorkerEventFanOut:
    """Passes each event to every observer; an observer's error is logged, never raised."""

    def __init__(self, observers: Sequence[WorkerEvents]) -> None:
        self.observers = list(observers)

    def on_job_started(self, job: JobRow) -> None:
        for observer in self.observers:
            _safely(observer.on_job_started, job)

    def on_step(self, job_id: int, step: int, total_steps: int) -> None:
        for observer in self.observers:
            _safely(observer.on_step, job_id, step, total_steps)

    def on_image_done(self, job_id: int, image: GeneratedImage, output: Path) -> None:
        for observer in self.observers:
            _safely(observer.on_image_done, job_id, image, output)

    def on_job_finished(self, job_id: int, state: str, error: str | None) -> None:
        for observer in self.observers:
            _safely(observer.on_job_finished, job_id, state, error)


def _safely(call, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        call(*args)
    except Exception:  # an observer's bug must never fail or stop an image
        logger.exception("a worker event observer failed; the job goes on")
