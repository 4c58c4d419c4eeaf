"""Keeping the journal bounded: records older than ``journal.keep_days`` are forgotten.

A render box that makes ten thousand images a day adds about 18 MB a day to the journal; left
alone it grows for ever, and every ``status`` and metrics scrape counts through it. The daemon
forgets a little at a time (``Journal.forget_before`` in short batches, a fraction of a second
per tick), so intake and the worker never wait long for the file. A round runs at start (so
``fooocusd once`` from cron keeps it bounded too) and then every hour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from loguru import logger

from fooocusd.errors import FooocusdError
from fooocusd.journal.journal import Journal

SECONDS_PER_DAY = 86_400.0
ROUND_EVERY_SECONDS = 3600.0
TICK_BUDGET_SECONDS = 0.2


class JournalUpkeep:
    def __init__(
        self,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self._clock = clock
        self._monotonic = monotonic
        self._next_round = monotonic()
        self._cutoff: float | None = None
        """The clock time the open round forgets before; None between rounds."""
        self._forgotten = 0

    def tick(self, keep_days: float) -> None:
        """Forget for at most ``TICK_BUDGET_SECONDS``; ``keep_days`` 0 keeps everything."""
        if keep_days <= 0:
            return
        started = self._monotonic()
        if self._cutoff is None:
            if started < self._next_round:
                return
            self._cutoff = self._clock() - keep_days * SECONDS_PER_DAY
        try:
            while self._monotonic() - started < TICK_BUDGET_SECONDS:
                deleted = self.journal.forget_before(self._cutoff)
                self._forgotten += deleted
                if deleted == 0:
                    self._end_round(keep_days)
                    return
        except FooocusdError as exc:  # the file stayed locked: the next round tries again
            logger.warning("journal upkeep: {}", exc.message)
            self._end_round(keep_days)

    def _end_round(self, keep_days: float) -> None:
        if self._forgotten and self._cutoff is not None:
            before = datetime.fromtimestamp(self._cutoff).strftime("%Y-%m-%d %H:%M")
            logger.info(
                "journal: forgot {:,} records of files finished before {} (journal.keep_days = {:g})",
                self._forgotten,
                before,
                keep_days,
            )
        self._cutoff = None
        self._forgotten = 0
        self._next_round = self._monotonic() + ROUND_EVERY_SECONDS
