"""Decide when a file has finished arriving.

A file is *stable* once its (size, mtime_ns, inode) have not changed for ``settle_seconds``
since the last change we saw. Any change, or any write event reported by the watcher, restarts
the clock. Zero-byte files are never stable (browsers and SMB copies create an empty
placeholder first). A file that keeps changing is waited for forever — never given up on.

The tracker does no I/O: callers pass in what they stat'ed, which keeps it easy to test with
an injected clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, result: os.stat_result) -> FileStat:
        return cls(size=result.st_size, mtime_ns=result.st_mtime_ns, inode=result.st_ino)


@dataclass
class _Record:
    stat: FileStat
    changed_at: float


class StabilityTracker:
    """Per-path record of the last observed stat and when it last changed. Thread-safe."""

    def __init__(self, settle_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must be >= 0")
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._records: dict[Hashable, _Record] = {}
        self._lock = threading.Lock()

    def observe(
        self, path: Hashable, stat: FileStat | None, now: float | None = None, *, activity: bool = False
    ) -> bool:
        """Record a fresh stat of ``path`` and return whether it is stable now.

        ``stat=None`` means the file vanished: it is dropped. ``activity=True`` (a write event
        arrived) restarts the clock even if the stat looks the same, because mtime resolution
        can be coarse (2 s on FAT, 1 s on some network filesystems).
        """
        now = self._clock() if now is None else now
        with self._lock:
            if stat is None:
                self._records.pop(path, None)
                return False
            record = self._records.get(path)
            if record is None or record.stat != stat or activity:
                record = _Record(stat=stat, changed_at=now)
                self._records[path] = record
            return self._is_stable(record, now)

    def is_due(self, path: Hashable, now: float | None = None) -> bool:
        """True when the settle time has passed since the last change: time to stat again and
        confirm with ``observe``. Saves stat calls for files that cannot be stable yet."""
        now = self._clock() if now is None else now
        with self._lock:
            record = self._records.get(path)
            return record is not None and now - record.changed_at >= self.settle_seconds

    def forget(self, path: Hashable) -> None:
        with self._lock:
            self._records.pop(path, None)

    def tracked(self) -> list[Hashable]:
        with self._lock:
            return list(self._records)

    def empty(self) -> list[Hashable]:
        """The tracked zero-byte files, which wait until they fill."""
        with self._lock:
            return [path for path, record in self._records.items() if record.stat.size == 0]

    def filling(self) -> int:
        """How many tracked files are non-empty (zero-byte placeholders may wait forever)."""
        with self._lock:
            return sum(1 for record in self._records.values() if record.stat.size > 0)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._records

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def next_deadline(self) -> float | None:
        """Earliest clock time at which some tracked non-empty file could become stable."""
        with self._lock:
            deadlines = [
                r.changed_at + self.settle_seconds for r in self._records.values() if r.stat.size > 0
            ]
        return min(deadlines, default=None)

    def _is_stable(self, record: _Record, now: float) -> bool:
        return record.stat.size > 0 and now - record.changed_at >= self.settle_seconds
