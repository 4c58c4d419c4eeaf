"""The daemon's optional companions: the Prometheus endpoint and the post-job hooks.

Both are off unless configured; this keeps their start, stop and wiring out of the main loop.
"""

from __future__ import annotations

from pathlib import Path

from fooocusd.service.hooks import PostJobHooks
from fooocusd.service.metrics import DaemonMetrics, MetricsServer
from fooocusd.service.start_timeline import StartTimeline
from fooocusd.service.worker_events import WorkerEventFanOut, WorkerEvents
from fooocusd.settings import Settings


class DaemonExtras:
    def __init__(self, settings: Settings, journal_db: Path) -> None:
        self.metrics: DaemonMetrics | None = None
        self.server: MetricsServer | None = None
        if settings.metrics.enabled:
            paths = settings.paths.resolved()
            self.metrics = DaemonMetrics(journal_db, {"outbox": paths.outbox, "state": paths.state})
            self.server = MetricsServer(settings.metrics, self.metrics)
        self.hooks = PostJobHooks(
            settings.hooks,
            journal_db,
            on_dropped=self._hook_dropped,
            on_failure=self._hook_failed,
        )

    def start(self) -> None:
        """Raises ``ConfigError`` when the metrics port cannot be opened."""
        if self.server is not None:
            self.server.start()
        self.hooks.start()

    def stop(self) -> None:
        """After the worker stopped: runs the hooks still queued (bounded), then closes the endpoint."""
        self.hooks.stop()
        if self.server is not None:
            self.server.stop()
        if self.metrics is not None:
            self.metrics.close()

    def worker_events(self) -> WorkerEvents:
        observers: list[WorkerEvents] = [self.hooks]
        if self.metrics is not None:
            observers.append(self.metrics)
        return WorkerEventFanOut(observers)

    def ready(self, timeline: StartTimeline | None = None, *, model_loaded: bool = True) -> None:
        """``model_loaded``: False when the daemon started without it (no room on the GPU)."""
        if self.metrics is None:
            return
        self.metrics.ready.set(1)
        self.metrics.model_loaded.set(int(model_loaded))
        if timeline is None:
            return
        for step, seconds in timeline.steps.items():
            self.metrics.start_seconds.labels(step).set(seconds)
        self.metrics.start_total_seconds.set(timeline.total)

    def set_paused(self, paused: bool) -> None:
        if self.metrics is not None:
            self.metrics.paused.set(int(paused))

    def set_model_loaded(self, loaded: bool) -> None:
        if self.metrics is not None:
            self.metrics.model_loaded.set(int(loaded))

    def count_reload(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(result).inc()

    def _hook_dropped(self) -> None:
        if self.metrics is not None:
            self.metrics.hook_events_dropped.inc()

    def _hook_failed(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.hook_failures.labels(kind).inc()
