"""A full disk under the journal: a write that finds no room waits for it, instead of failing.

SQLite rolls a transaction back when the disk is full, so the journal is never left half-written;
the write is then simply tried again (``fooocusd/space_wait.py``) when the journal has a
``space_wait``, as the daemon's has.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from fooocusd.errors import DiskFull
from fooocusd.space_wait import retry_until_room

if TYPE_CHECKING:
    from fooocusd.journal.journal import Journal

P = ParamSpec("P")
R = TypeVar("R")


class JournalFull(DiskFull):
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


def waits_for_space(method: Callable[Concatenate[Journal, P], R]) -> Callable[Concatenate[Journal, P], R]:
    """A journal write that, when the disk is full and its journal has a ``SpaceWait``, waits
    (1 s, doubling up to 30 s) and tries again until it succeeds."""

    @functools.wraps(method)
    def patient(journal: Journal, *args: P.args, **kwargs: P.kwargs) -> R:
        return retry_until_room(
            lambda: method(journal, *args, **kwargs), journal.space_wait, journal.full_disk_log
        )

    return patient
