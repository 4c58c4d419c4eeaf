"""Post-job hooks: a command and/or a webhook told about each job that ended.

When a hook fires: as soon as the worker records a job as ``done`` (every image and its sidecar
is published in the outbox) or ``failed``. For a user "finished" means the outputs are complete,
so hooks do not wait for the input file to be moved to done/ or failed/ (that follows within a
fraction of a second on the main loop). A file refused at intake (never a job: bad TOML, an unknown
key) fires ``refused`` once it lies in failed/, so a script waiting for its result is not left
waiting for ever.

Hooks run one at a time on their own thread from a bounded queue, so the GPU worker never waits
for them: a full queue drops the event (logged, counted). A command that runs too long is
killed with its whole process group. A failing hook is logged and never changes the job.
Delivery is at most once: events still queued when the daemon stops are logged as lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from loguru import logger

from fooocusd import __version__
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import OutputState
from fooocusd.outbox.naming import sidecar_path_for
from fooocusd.service.worker_events import NoWorkerEvents
from fooocusd.settings import HooksSettings

HookFailureKind = Literal["command", "timeout", "webhook", "internal"]
HOOK_FAILURE_KINDS: tuple[HookFailureKind, ...] = get_args(HookFailureKind)

_POLL_SECONDS = 0.2
_STOP_GRACE_SECONDS = 5.0
_STDERR_TAIL_CHARS = 500


def command_argv(command: str | list[str]) -> list[str]:
    """The argv a ``hooks.command`` setting runs (no shell). Raises ``ValueError`` if unusable."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"hooks.command cannot be split into arguments: {exc}") from exc
    else:
        argv = list(command)
    if argv and not argv[0].strip():
        raise ValueError("hooks.command must start with the program to run")
    return argv


@dataclass(frozen=True)
class HookEvent:
    event: str  # 'done', 'failed' or 'refused'
    job_id: int | None  # None for a file refused at intake
    error: str | None
    at: float
    input: str | None = None  # a refused file's path in the inbox (a job's comes from the journal)
    failed_paths: tuple[str, ...] = ()

    @property
    def subject(self) -> str:
        return f"job {self.job_id}" if self.job_id is not None else f"refused file {self.input}"


class PostJobHooks(NoWorkerEvents):
    """A ``WorkerEvents`` observer that runs the configured hooks on a thread of its own.

    ``settings`` may be replaced while running (config reload); ``queue_size`` applies at start.
    """

    def __init__(
        self,
        settings: HooksSettings,
        journal_db: Path,
        *,
        on_dropped: Callable[[], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.journal_db = journal_db
        self.on_dropped = on_dropped
        self.on_failure = on_failure
        self._queue: queue.Queue[HookEvent] = queue.Queue(maxsize=settings.queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fooocusd-hooks", daemon=True)
        self._journal: Journal | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._process_lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(command_argv(self.settings.command) or self.settings.webhook_url)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Run what is queued for up to one hook timeout more, then kill a hook still running."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.settings.timeout_seconds + _STOP_GRACE_SECONDS)
        if self._thread.is_alive():
            self._kill_running("the daemon is stopping")
            self._thread.join(_STOP_GRACE_SECONDS)
        lost = self._queue.qsize()
        if lost:
            logger.warning("{} post-job hook event(s) were not delivered: the daemon stopped", lost)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- WorkerEvents (only the end of a job matters here) --------------------------------------

    def on_job_finished(self, job_id: int, state: str, error: str | None) -> None:
        self._enqueue(HookEvent(state, job_id, error, time.time()))

    def on_input_refused(self, relpath: str, reason: str, failed_paths: list[Path]) -> None:
        """The intake moved a file that is not a job to failed/ (called on the main loop)."""
        paths = tuple(str(path) for path in failed_paths)
        self._enqueue(HookEvent("refused", None, reason, time.time(), input=relpath, failed_paths=paths))

    def _enqueue(self, event: HookEvent) -> None:
        if event.event not in self.settings.on or not self.configured:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            logger.warning(
                "post-job hooks are {} events behind; the '{}' event of {} is dropped",
                self._queue.maxsize,
                event.event,
                event.subject,
            )
            if self.on_dropped is not None:
                self.on_dropped()

    # -- the hook thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            try:
                self.deliver(event)
            except Exception:  # a hook must never take the daemon down
                logger.exception("post-job hook for {} failed", event.subject)
                self._failed("internal")

    def deliver(self, event: HookEvent) -> None:
        payload = self.payload(event)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        argv = command_argv(self.settings.command)
        if argv:
            self._run_command(argv, body, payload)
        if self.settings.webhook_url:
            self._post(self.settings.webhook_url, body, event)

    def payload(self, event: HookEvent) -> dict[str, Any]:
        """What a hook receives: the job, its input, and the sidecar of each published image."""
        if event.job_id is None:
            return self._refusal_payload(event)
        journal = self._read_journal()
        job = journal.get_job(event.job_id)
        source = journal.get_input(job.input_id) if job is not None else None
        outputs = []
        for row in journal.outputs_for(event.job_id):
            if row.state != OutputState.COMPLETE:
                continue
            sidecar = sidecar_path_for(Path(row.path))
            outputs.append(
                {"path": str(row.path), "sidecar_path": str(sidecar), "sidecar": _read_json(sidecar)}
            )
        return {
            "event": event.event,
            "job_id": event.job_id,
            "input": source.relpath if source is not None else None,
            "job_number": job.seq + 1 if job is not None else None,
            "state": str(job.state) if job is not None else event.event,
            "error": event.error,
            "attempts": job.attempts if job is not None else None,
            "finished_at": datetime.fromtimestamp(event.at, UTC).isoformat(),
            "outputs": outputs,
            "fooocusd_version": __version__,
        }

    def _refusal_payload(self, event: HookEvent) -> dict[str, Any]:
        return {
            "event": event.event,
            "job_id": None,
            "input": event.input,
            "job_number": None,
            "state": "refused",
            "error": event.error,
            "attempts": 0,
            "finished_at": datetime.fromtimestamp(event.at, UTC).isoformat(),
            "outputs": [],
            "failed_paths": list(event.failed_paths),
            "fooocusd_version": __version__,
        }

    def _read_journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal.open_read_only(self.journal_db)
        return self._journal

    def _run_command(self, argv: list[str], body: bytes, payload: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update(
            FOOOCUSD_EVENT=payload["event"],
            FOOOCUSD_JOB_ID="" if payload["job_id"] is None else str(payload["job_id"]),
            FOOOCUSD_INPUT=payload["input"] or "",
            FOOOCUSD_OUTPUTS="\n".join(output["path"] for output in payload["outputs"]),
        )
        timeout = self.settings.timeout_seconds
        subject = f"job {payload['job_id']}" if payload["job_id"] is not None else payload["input"]
        label = f"hook command {argv[0]} for {subject}"
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills its children too
            )
        except OSError as exc:
            logger.error("{} could not start: {}", label, exc.strerror or exc)
            self._failed("command")
            return
        with self._process_lock:
            self._process = process
        try:
            _, stderr = process.communicate(body, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            logger.warning("{} ran longer than hooks.timeout_seconds = {:g}; killed", label, timeout)
            self._failed("timeout")
            return
        finally:
            with self._process_lock:
                self._process = None
        if process.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL_CHARS:]
            logger.warning(
                "{} exited with status {}{}", label, process.returncode, f": {tail}" if tail else ""
            )
            self._failed("command")
        else:
            logger.debug("{} succeeded", label)

    def _post(self, url: str, body: bytes, event: HookEvent) -> None:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"fooocusd/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_seconds) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            logger.warning("webhook for {}: {} answered {} {}", event.subject, url, exc.code, exc.reason)
            self._failed("webhook")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            logger.warning("webhook for {}: could not reach {}: {}", event.subject, url, reason)
            self._failed("webhook")

    def _kill_running(self, why: str) -> None:
        with self._process_lock:
            process = self._process
        if process is not None and process.poll() is None:
            logger.warning("killing the running post-job hook: {}", why)
            _kill_group(process)

    def _failed(self, kind: HookFailureKind) -> None:
        if self.on_failure is not None:
            self.on_failure(kind)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("post-job hook: cannot read the sidecar {}: {}", path, exc)
        return None
    return data if isinstance(data, dict) else None
