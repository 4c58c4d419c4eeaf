"""Telling a share that went away from a folder someone deleted.

When a network share or USB disk under the outbox is unmounted, its mount point stays behind as
an empty folder on the local disk. Writing there, and making the missing folders, would put the
images on the root disk, hidden again under the share once it is mounted back. So the outbox's
disk is noted at start: a write finds the outbox on another disk than that (the bare mount
point), or gone along with that disk, and waits for it (``ShareGone``) instead. An outbox deleted
from a disk that is still there is made again, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from fooocusd.errors import ShareGone


class FolderDisk:
    """The disk ``folder`` was on when this was made (None: it was not there)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.device = _device(folder)

    def check(self) -> None:
        """Raise ``ShareGone`` when ``folder`` is not on its disk any more."""
        if self.device is None:
            return
        now = _device(self.folder)
        if now == self.device:
            return
        mount = f"`findmnt -T {self.folder}` shows what is mounted there now"
        if now is None:
            if _device(_nearest_existing(self.folder)) == self.device:
                return  # deleted from a disk that is still mounted: it is made again
            raise ShareGone(
                f"{self.folder} is gone, along with the disk or share it was on",
                hint=f"mount that disk or share again ({mount})",
                where=str(self.folder),
            )
        raise ShareGone(
            f"{self.folder} is no longer on the disk it was on at start: is its disk or share unmounted?",
            hint=f"mount it again ({mount}); if it moved to another disk on purpose, restart fooocusd",
            where=str(self.folder),
        )


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _nearest_existing(path: Path) -> Path:
    for candidate in path.parents:
        if candidate.exists():
            return candidate
    return Path("/")
