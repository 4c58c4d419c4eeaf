"""The names already in output folders, casefolded, kept between name choices.

Choosing a free output name compares case-insensitively (``naming.choose_free_name``), so that
names stay distinct on Windows and macOS sync targets; that takes a listing of the folder. Listed
afresh for every image, an outbox that has grown to 100,000 files cost 0.16 s per image on the
render thread (``bench/free_name.py``). Here a listing is kept and used again:

* while the folder's modification time is the one seen when it was listed; or
* when the folder has changed (the daemon's own writes change it all the time), until
  ``RELIST_COST_FACTOR`` times the last listing's duration has passed. Listing then takes at most
  about 2 % of the render thread's time, however large the folder: a folder of 1,000 files is
  listed again after a few tens of milliseconds, one of 100,000 after several seconds.

Names the daemon chooses are added at once (``add``), so its own outputs never need a listing to
be seen. What a kept listing can miss for a while is a file someone else added, and only when its
name differs from a future output's by case alone: exact names are checked on disk at every choice,
the journal reserves every planned name, and publishing never overwrites.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

MAX_FOLDERS = 64
"""Folders whose listings are kept (least recently used goes first)."""
RELIST_COST_FACTOR = 50.0
"""A changed folder is listed again once this many times the last listing's duration has passed."""


@dataclass
class _Listing:
    modified_ns: int
    names: set[str]
    listed_at: float
    seconds: float

    def due(self, now: float) -> bool:
        """Whether a changed folder may be listed again (its share of the time stays small)."""
        return now - self.listed_at >= RELIST_COST_FACTOR * self.seconds


class FolderNames:
    """Casefolded entry names per folder; safe to share between threads."""

    def __init__(self, max_folders: int = MAX_FOLDERS) -> None:
        self._max_folders = max_folders
        self._listings: OrderedDict[Path, _Listing] = OrderedDict()
        self._lock = threading.Lock()
        self.listings = 0
        """Folder listings made (for tests and benchmarks)."""

    def existing(self, folder: Path) -> set[str]:
        """The casefolded names in ``folder`` (empty when it does not exist). Read-only."""
        modified = _modified_ns(folder)
        if modified is None:
            return set()
        now = time.monotonic()
        with self._lock:
            listing = self._listings.get(folder)
            if listing is not None and (listing.modified_ns == modified or not listing.due(now)):
                self._listings.move_to_end(folder)
                return listing.names
        names = list_casefolded(folder)  # after the stat: a change in between lists again next time
        seconds = time.monotonic() - now
        with self._lock:
            self.listings += 1
            self._listings[folder] = _Listing(modified, names, now, seconds)
            self._listings.move_to_end(folder)
            while len(self._listings) > self._max_folders:
                self._listings.popitem(last=False)
        return names

    def add(self, folder: Path, *names: str) -> None:
        """Names the daemon has chosen in ``folder``: taken from now on, listed or not."""
        with self._lock:
            listing = self._listings.get(folder)
            if listing is not None:
                listing.names.update(name.casefold() for name in names)


def list_casefolded(folder: Path) -> set[str]:
    """Every entry name in ``folder``, casefolded; empty when the folder does not exist."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name.casefold() for entry in entries}
    except FileNotFoundError:
        return set()


def _modified_ns(folder: Path) -> int | None:
    try:
        return folder.stat().st_mtime_ns
    except FileNotFoundError:
        return None
