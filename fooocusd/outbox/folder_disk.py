"""Telling a share that went away from a folder someone deleted.

When a network share or USB disk is unmounted, its mount point stays behind as an empty folder on
the local disk. Writing there, and making the missing folders, would put the images on the root
disk, hidden again under the share once it is mounted back. So the mount a folder is on is noted
at start: while that mount point is no longer mounted, a write waits for it (``ShareGone``)
instead. A folder deleted from a disk that is still mounted is made again, and a share mounted
after the start (a boot that started fooocusd first) is simply written to.
"""

from __future__ import annotations

import os
from pathlib import Path

from fooocusd.errors import ShareGone


class FolderDisk:
    """The mount point ``folder`` was under when this was made; None for the root filesystem,
    which never goes away."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mount = _mount_point(folder)

    def check(self) -> None:
        """Raise ``ShareGone`` while the mount ``folder`` was on is not mounted."""
        if self.mount is None or os.path.ismount(self.mount):
            return
        raise ShareGone(
            f"{self.folder} is on {self.mount}, which is no longer mounted",
            hint=f"mount it again (`findmnt {self.mount}` shows it once it is; "
            f"`mount {self.mount}` if it is in /etc/fstab)",
            where=str(self.folder),
        )


def _mount_point(folder: Path) -> Path | None:
    """The nearest folder at or above ``folder`` that is a mount point (None: the root)."""
    for candidate in (folder, *folder.parents):
        if candidate.parent == candidate:
            return None
        if os.path.ismount(candidate):
            return candidate
    return None
