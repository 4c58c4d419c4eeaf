"""What the daemon tells systemd: readiness, status, watchdog pings, stop (sd_notify(3)).

Everything here is a silent no-op when ``$NOTIFY_SOCKET`` is unset (not started by systemd).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from fooocusd.journal.journal import unfinished_jobs
from fooocusd.service.queue_estimate import duration_text

Clock = Callable[[], float]

MODEL_LOAD_EXTENSION_SECONDS = 300.0
STATUS_EVERY_SECONDS = 5.0
STOP_EXTENSION_SECONDS = 30.0


class Notifier:
    """A datagram writer to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace)."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.address = _address(socket_path) if socket_path else None
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None
        # Made once, up front: sends come from the main loop, the worker and signal handlers,
        # and a datagram send on one socket needs no lock (a lock could deadlock a handler).
        self._socket = (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) if self.address else None
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        watchdog_usec = _positive_int(env.get("WATCHDOG_USEC"))
        watchdog_pid = _positive_int(env.get("WATCHDOG_PID"))
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            watchdog_usec = None  # the watchdog is meant for another process (e.g. our parent)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send("STATUS=" + " ".join(text.split()))  # one line: a newline starts a new field

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        """Type=notify-reload needs the monotonic timestamp, or ``systemctl reload`` misbehaves."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def send(self, *fields: str) -> bool:
        """Send one message; returns whether it went out. Never raises: systemd is optional.

        Never blocks either: a stalled reader (the datagram queue holds only ~10 messages) must not
        stall the daemon, so a full queue drops the message with a warning.
        """
        if self._socket is None or self.address is None:
            return False
        try:
            self._socket.sendto("\n".join(fields).encode("utf-8"), socket.MSG_DONTWAIT, self.address)
            return True
        except OSError as exc:
            logger.warning("could not notify systemd at {!r}: {}", self.address, exc)
            return False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _address(path: str) -> str:
    # Abstract-namespace sockets are written '@name'; the kernel wants a leading NUL byte.
    return "\0" + path[1:] if path.startswith("@") else path


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw else 0
    except ValueError:
        return None
    return value if value > 0 else None


class WorkerPulse:
    """Whether the GPU worker is alive: idle, or its last progress is younger than ``stale_after``.

    A worker stuck in a hung CUDA call stops reporting steps; the watchdog pings then stop and
    systemd restarts the service.
    """

    def __init__(self, stale_after: float, clock: Clock = time.monotonic) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self.label: str | None = None
        self.done_steps = 0
        self.total_steps = 0
        self.waiting_for: str | None = None
        """Why the worker is waiting rather than stuck (a full disk), until it moves on."""
        self._busy = False
        self._last_sign_of_life = clock()

    def job_started(self) -> None:
        self._busy = True
        self.waiting_for = None
        self._last_sign_of_life = self.clock()

    def progressed(self, label: str, done_steps: int, total_steps: int) -> None:
        self.label, self.done_steps, self.total_steps = label, done_steps, total_steps
        self.waiting_for = None
        self._last_sign_of_life = self.clock()

    def waiting(self, why: str) -> None:
        """Alive, and waiting for something outside it (each pause of a wait calls this)."""
        self.waiting_for = why
        self._last_sign_of_life = self.clock()

    def job_ended(self) -> None:
        self._busy = False
        self.label = None
        self.waiting_for = None
        self._last_sign_of_life = self.clock()

    def healthy(self) -> bool:
        return not self._busy or self.clock() - self._last_sign_of_life <= self.stale_after


class ServiceReporter:
    """Called from the daemon's main loop: throttled STATUS= lines and progress-gated WATCHDOG=1."""

    def __init__(self, notifier: Notifier, pulse: WorkerPulse, clock: Clock = time.monotonic) -> None:
        self.notifier = notifier
        self.pulse = pulse
        self.clock = clock
        self._last_status: float | None = None
        self._last_ping: float | None = None
        self._last_extension: float | None = None
        self.note: str | None = None  # e.g. "reload refused: ...", kept in every STATUS= line
        self.paused = False

    def tick(
        self,
        journal_status: Callable[[], dict[str, Any]],
        seconds_left: Callable[[], float | None] | None = None,
    ) -> None:
        """``seconds_left``: how long the queue will take (``queue_estimate``), read with each
        STATUS= line."""
        if not self.notifier.enabled:
            return
        now = self.clock()
        if self._last_status is None or now - self._last_status >= STATUS_EVERY_SECONDS:
            self._last_status = now
            status = journal_status()
            left = seconds_left() if seconds_left is not None and unfinished_jobs(status["counts"]) else None
            self.notifier.status(self.status_text(status, left))
        interval = self.notifier.watchdog_interval
        if interval is not None and (self._last_ping is None or now - self._last_ping >= interval):
            if self.pulse.healthy():
                self._last_ping = now
                self.notifier.watchdog()
            else:
                logger.warning(
                    "the worker has shown no progress for over {:.0f} s; watchdog pings stop",
                    self.pulse.stale_after,
                )
                self._last_ping = now  # warn once per interval, not every tick

    def while_stopping(self) -> None:
        """While the last image finishes, keep the stop timeout open — only if the worker moves."""
        if not self.notifier.enabled or not self.pulse.healthy():
            return
        now = self.clock()
        if self._last_extension is None or now - self._last_extension >= STOP_EXTENSION_SECONDS / 3:
            self._last_extension = now
            self.notifier.extend_timeout(STOP_EXTENSION_SECONDS)

    def status_text(self, journal_status: dict[str, Any], seconds_left: float | None = None) -> str:
        counts = journal_status.get("counts", {})
        text = f"queued {counts.get('queued', 0)}, running {counts.get('running', 0)}"
        if seconds_left is not None:
            text += f" (about {duration_text(seconds_left)} left)"
        if self.paused:
            text = f"paused (fooocusd resume); {text}"
        if self.pulse.label is not None:
            text += f"; {self.pulse.label}: step {self.pulse.done_steps}/{self.pulse.total_steps}"
        if self.pulse.waiting_for:
            text += f"; {self.pulse.waiting_for}"
        if self.note:
            text += f"; {self.note}"
        return text
