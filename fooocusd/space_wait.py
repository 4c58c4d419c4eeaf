"""Waiting out a full disk (or a network share gone): a write that finds no room is tried again
once there is some.

Inbox, outbox and state folder usually share one disk. When it fills, failing each job in turn
would move a whole night's queue into failed/ for a reason that has nothing to do with the files,
and a daemon that stopped would, under systemd, restart into the same wall. So inside the daemon
a write refused with ``DiskWait`` (``DiskFull``, or ``ShareGone`` when a network share stopped
answering; either leaves nothing behind) waits, 1 s doubling up to 30 s, and is tried again until
it succeeds or the daemon is told to stop. The log says what is full at
most every five minutes, and once when a long wait is over. Commands (``retry``, ``cancel``) do
not wait: they say the disk is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from loguru import logger

from fooocusd.errors import DiskWait

FIRST_DELAY_SECONDS = 1.0
LONGEST_DELAY_SECONDS = 30.0
SAY_FULL_EVERY_SECONDS = 300.0
"""A disk that stays nearly full lets some writes through and not others: say it at most this often."""
WORTH_SAYING_SECONDS = 10.0
"""A wait shorter than this ends without a line of its own."""

R = TypeVar("R")


@dataclass(frozen=True)
class SpaceWait:
    """How a write waits for room: ``keep_waiting(error)`` is asked before each pause (False: give
    up and raise), ``sleep`` pauses (the daemon's wakes early when it is told to stop)."""

    keep_waiting: Callable[[DiskWait], bool]
    sleep: Callable[[float], object] = time.sleep


class FullDiskLog:
    """What the log says about one kind of write (``what``: "the journal", "the outbox") waiting."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.clock = clock
        self._said_at: float | None = None
        self._waiting_for = "room"

    def full(self, exc: DiskWait) -> None:
        now = self.clock()
        if self._said_at is None or now - self._said_at >= SAY_FULL_EVERY_SECONDS:
            self._said_at = now
            self._waiting_for = exc.waiting_for
            logger.error(
                "{}; {}. Nothing is lost: the daemon waits and carries on by itself when {}",
                exc.message,
                exc.hint,
                exc.until,
            )

    def room(self, waited: float) -> None:
        if waited >= WORTH_SAYING_SECONDS:
            logger.info(
                "{} can be written again, after {:.0f} s of waiting for {}",
                self.what,
                waited,
                self._waiting_for,
            )


def retry_until_room(attempt: Callable[[], R], wait: SpaceWait | None, log: FullDiskLog) -> R:
    """``attempt()``, tried again after a pause each time it raises ``DiskWait``, while ``wait``
    says to keep waiting; without a ``wait`` the first ``DiskWait`` is raised."""
    delay = FIRST_DELAY_SECONDS
    waited_since: float | None = None
    while True:
        try:
            result = attempt()
        except DiskWait as exc:
            if wait is None or not wait.keep_waiting(exc):
                raise
            if waited_since is None:
                waited_since = time.monotonic()
            log.full(exc)
            wait.sleep(delay)
            delay = min(delay * 2, LONGEST_DELAY_SECONDS)
            continue
        if waited_since is not None:
            log.room(time.monotonic() - waited_since)
        return result
