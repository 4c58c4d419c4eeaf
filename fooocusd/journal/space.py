"""A full disk under the journal: a write that finds no room waits for it, instead of failing.

SQLite rolls a transaction back when the disk is full, so the journal is never left half-written;
the write is then simply tried again. Inside the daemon that waiting is what users want: the
inbox, the outbox and the state folder usually share one disk, and a daemon that stopped (or,
under systemd, restarted in a loop) the moment it filled would help no one. Every step of the
claim → render → finish protocol eventually completes, so nothing is lost or run twice; the log
says once what is wrong and once when it is over. Commands (``retry``, ``cancel``) do not wait:
they say the disk is full and exit.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from loguru import logger

from fooocusd.errors import TransientError

if TYPE_CHECKING:
    from fooocusd.journal.journal import Journal

FIRST_DELAY_SECONDS = 1.0
LONGEST_DELAY_SECONDS = 30.0
SAY_FULL_EVERY_SECONDS = 300.0
"""A disk that stays nearly full lets some writes through and not others: say it at most this often."""
WORTH_SAYING_SECONDS = 10.0
"""A wait shorter than this ends without a line of its own."""

P = ParamSpec("P")
R = TypeVar("R")


class JournalFull(TransientError):
    """The disk holding the journal has no room for a write, which was rolled back whole."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)
    )


def journal_full(db_path: Path) -> JournalFull:
    folder = db_path.parent
    return JournalFull(
        f"cannot write the journal {db_path}: the disk is full",
        hint=f"free some space on the disk that holds {folder} (`df -h {folder}` shows it)",
        where=str(db_path),
    )


@dataclass(frozen=True)
class SpaceWait:
    """How a journal waits for room: ``keep_waiting`` is asked before each pause (False: give up
    and raise), ``sleep`` pauses (the daemon's wakes early when it is told to stop)."""

    keep_waiting: Callable[[], bool]
    sleep: Callable[[float], object] = time.sleep


def waits_for_space(method: Callable[Concatenate[Journal, P], R]) -> Callable[Concatenate[Journal, P], R]:
    """A journal write that, when the disk is full and its journal has a ``SpaceWait``, waits
    (1 s, doubling up to 30 s) and tries again until it succeeds."""

    @functools.wraps(method)
    def patient(journal: Journal, *args: P.args, **kwargs: P.kwargs) -> R:
        delay = FIRST_DELAY_SECONDS
        waited_since: float | None = None
        while True:
            try:
                result = method(journal, *args, **kwargs)
            except JournalFull as exc:
                wait = journal.space_wait
                if wait is None or not wait.keep_waiting():
                    raise
                if waited_since is None:
                    waited_since = time.monotonic()
                _say_full(journal, exc)
                wait.sleep(delay)
                delay = min(delay * 2, LONGEST_DELAY_SECONDS)
                continue
            if waited_since is not None:
                _say_room(journal, time.monotonic() - waited_since)
            return result

    return patient


def _say_full(journal: Journal, exc: JournalFull) -> None:
    now = time.monotonic()
    if journal.full_said_at is None or now - journal.full_said_at >= SAY_FULL_EVERY_SECONDS:
        journal.full_said_at = now
        logger.error(
            "{}; {}. Nothing is lost: the daemon waits and carries on by itself when there is room",
            exc.message,
            exc.hint,
        )


def _say_room(journal: Journal, waited: float) -> None:
    if waited >= WORTH_SAYING_SECONDS:
        logger.info("the journal can be written again, after {:.0f} s of a full disk", waited)
