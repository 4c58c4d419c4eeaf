"""Prometheus metrics, served over HTTP when ``[metrics] enabled = true``.

Everything lives in the daemon's own ``CollectorRegistry`` (never the process-global one), so
tests and embedding programs can run several daemons side by side. Job counts are not kept
twice: a collector reads them from the journal (its own read-only connection) at each scrape.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args
from wsgiref.simple_server import WSGIServer

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fooocusd.engine.base import GeneratedImage
from fooocusd.errors import ConfigError, FooocusdError
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import JobRow
from fooocusd.service.free_space import folder_space
from fooocusd.service.hooks import HOOK_FAILURE_KINDS
from fooocusd.settings import MetricsSettings

ReloadResult = Literal["applied", "refused"]
RELOAD_RESULTS: tuple[ReloadResult, ...] = get_args(ReloadResult)

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
QUEUE_WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
GENERATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class DaemonMetrics:
    """The daemon's metrics; also a ``WorkerEvents`` observer (see ``service/worker_events.py``)."""

    def __init__(self, journal_db: Path, disk_folders: dict[str, Path] | None = None) -> None:
        """``disk_folders``: name → folder whose disk's free bytes are reported."""
        self.registry = CollectorRegistry()
        self.up = Gauge("fooocusd_up", "1 while the daemon process runs.", registry=self.registry)
        self.ready = Gauge(
            "fooocusd_ready", "1 once the model is loaded and the inbox watched.", registry=self.registry
        )
        self.paused = Gauge(
            "fooocusd_paused", "1 while `fooocusd pause` holds the queue.", registry=self.registry
        )
        self.model_loaded = Gauge(
            "fooocusd_model_loaded",
            "1 while the model is in GPU memory; 0 while it is unloaded for a pause or when idle.",
            registry=self.registry,
        )
        self.images = Counter(
            "fooocusd_images_generated",
            "Images written to the outbox (with sidecar).",
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "fooocusd_step_seconds",
            "Seconds per denoising step (the first step of each image, which includes prompt"
            " encoding, is left out).",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "fooocusd_queue_wait_seconds",
            "Seconds from a job being queued (or due for its retry) to a worker starting it.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "fooocusd_image_generation_seconds",
            "Seconds to render one image: encoding, denoising and decoding, without model loading.",
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.hook_events_dropped = Counter(
            "fooocusd_hook_events_dropped",
            "Post-job hook events dropped because the hook queue was full.",
            registry=self.registry,
        )
        self.hook_failures = Counter(
            "fooocusd_hook_failures",
            "Post-job hooks that failed, timed out or could not be delivered.",
            ["kind"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "fooocusd_config_reloads",
            "Configuration reloads (SIGHUP) by result.",
            ["result"],
            registry=self.registry,
        )
        self.start_seconds = Gauge(
            "fooocusd_start_seconds",
            "Seconds of each step of the last start, from the process's start to ready (from the"
            " daemon's start where the process's is unknown).",
            ["step"],
            registry=self.registry,
        )
        self.start_total_seconds = Gauge(
            "fooocusd_start_total_seconds",
            "Seconds of the last start to ready, all steps together.",
            registry=self.registry,
        )
        # Every label value exists from the start, at 0, so that rate() and alerts see the series.
        for kind in HOOK_FAILURE_KINDS:
            self.hook_failures.labels(kind)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.journal_collector = JournalCollector(journal_db)
        self.registry.register(self.journal_collector)
        self.registry.register(GpuMemoryCollector())
        if disk_folders:
            self.registry.register(DiskFreeCollector(disk_folders))
        self.up.set(1)
        self._last_step: tuple[int, float] | None = None  # (job id, when)

    # -- WorkerEvents --------------------------------------------------------------------------

    def on_job_started(self, job: JobRow) -> None:
        if job.started is not None:
            queued_since = max(job.created, job.not_before)
            self.queue_wait_seconds.observe(max(0.0, job.started - queued_since))

    def on_step(self, job_id: int, step: int, total_steps: int) -> None:
        now = time.perf_counter()
        if step > 1 and self._last_step is not None and self._last_step[0] == job_id:
            self.step_seconds.observe(now - self._last_step[1])
        self._last_step = (job_id, now)

    def on_image_done(self, job_id: int, image: GeneratedImage, output: Path) -> None:
        self.images.inc()
        total = image.timings.get("total")
        if total is not None:
            self.generation_seconds.observe(max(0.0, total - image.timings.get("load", 0.0)))

    def on_job_finished(self, job_id: int, state: str, error: str | None) -> None:
        pass  # counted from the journal at scrape time

    def close(self) -> None:
        self.journal_collector.close()


class JournalCollector(Collector):
    """Jobs and inputs by state, read from the journal at each scrape."""

    def __init__(self, journal_db: Path) -> None:
        self.journal_db = journal_db
        self._journal: Journal | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status()
        except FooocusdError as exc:
            logger.warning("metrics: cannot read the journal: {}", exc.message)
            return
        jobs = GaugeMetricFamily("fooocusd_jobs", "Jobs in the journal by state.", labels=["state"])
        for state, count in sorted(status["counts"].items()):
            jobs.add_metric([state], count)
        yield jobs
        inputs = GaugeMetricFamily("fooocusd_inputs", "Dropped inputs by state.", labels=["state"])
        for state, count in sorted(status["inputs"].items()):
            inputs.add_metric([state], count)
        yield inputs
        refused = GaugeMetricFamily(
            "fooocusd_refused_files",
            "Files refused at intake (never a job): still in failed/, or put back by a retry.",
            labels=["state"],
        )
        for state, count in sorted(status["refused_files"].items()):
            refused.add_metric([state], count)
        yield refused
        yield GaugeMetricFamily(
            "fooocusd_jobs_waiting_for_retry",
            "Queued jobs whose retry time has not come yet.",
            value=status["waiting_for_retry"],
        )

    def _status(self) -> dict:  # type: ignore[type-arg]
        with self._lock:
            if self._journal is None:
                self._journal = Journal.open_read_only(self.journal_db)
            return self._journal.status(recent_failures=0)

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


class DiskFreeCollector(Collector):
    """Bytes free on the disks under the folders fooocusd writes: a full disk makes it wait (it fails
    nothing), so this is what an alert should watch."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "fooocusd_disk_free_bytes", "Bytes free on the disk that holds each folder.", labels=["folder"]
        )
        for name, path in self.folders.items():
            space = folder_space(name, path)
            if space is not None:
                family.add_metric([name], space.free)
        yield family


class GpuMemoryCollector(Collector):
    """CUDA memory per device; absent when CUDA is not available."""

    def collect(self) -> Iterator[Metric]:
        import torch

        if not torch.cuda.is_available():
            return
        readings = {
            "fooocusd_gpu_memory_allocated_bytes": ("Memory held by tensors.", torch.cuda.memory_allocated),
            "fooocusd_gpu_memory_reserved_bytes": (
                "Memory reserved by PyTorch's caching allocator.",
                torch.cuda.memory_reserved,
            ),
            "fooocusd_gpu_memory_peak_bytes": (
                "Peak memory held by tensors since the start.",
                torch.cuda.max_memory_allocated,
            ),
        }
        for name, (text, read) in readings.items():
            family = GaugeMetricFamily(name, text, labels=["device"])
            for index in range(torch.cuda.device_count()):
                family.add_metric([f"cuda:{index}"], read(index))
            yield family


class MetricsServer:
    """``prometheus_client``'s HTTP server for one registry, with a clean stop."""

    def __init__(self, settings: MetricsSettings, metrics: DaemonMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port = 0``)."""
        return int(self._server.server_port) if self._server is not None else 0

    def start(self) -> None:
        host, port = self.settings.host, self.settings.port
        if not is_loopback(host):
            logger.warning(
                "metrics are served on {} (metrics.allow_remote): anyone who reaches port {} can read"
                " them; there is no authentication",
                host,
                port,
            )
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                hint="pick another metrics.port (another program uses this one),"
                " or set metrics.enabled = false",
                where="metrics.port",
            ) from exc
        logger.info("metrics at http://{}:{}/metrics", _url_host(host), self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
