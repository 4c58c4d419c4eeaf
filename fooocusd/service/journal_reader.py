"""Read the journal of a daemon that may be starting, for ``status`` and ``submit --wait``.

A daemon takes the state folder before it has created or upgraded its journal. For that moment
the journal is missing, empty (schema version 0) or older than this fooocusd; readers wait for it
rather than report an error the user can do nothing about.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fooocusd.journal.journal import Journal, JournalNotReady
from fooocusd.service.state_lock import daemon_holding

STARTING_PATIENCE_SECONDS = 3.0
"""How long a reader waits for a starting daemon's journal before it says the daemon is starting."""

_POLL_SECONDS = 0.1


def open_when_ready(
    db_path: Path,
    state: Path,
    *,
    patience: float = STARTING_PATIENCE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Journal | None:
    """The journal, opened read-only; None when a daemon holds ``state`` and has not created its
    journal yet, or its journal is still not ready after ``patience`` seconds.

    With no daemon on ``state``, a journal that is not ready is an error (``JournalNotReady``): only
    a daemon makes it ready.
    """
    started = clock()
    while True:
        try:
            return Journal.open_read_only(db_path)
        except JournalNotReady:
            if daemon_holding(state) is None:
                raise
            # No file yet: the daemon is still loading torch and its model (seconds to a minute)
            # and creates it after; an existing one is being created or upgraded, briefly.
            if not db_path.exists() or clock() - started >= patience:
                return None
        sleep(_POLL_SECONDS)
