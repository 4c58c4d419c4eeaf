"""How much room the disks under fooocusd's folders have left, for ``status`` and ``doctor``.

A full disk does not fail jobs (the daemon waits for room, ``fooocusd/space_wait.py``), so the
commands are where a user learns that it is near.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

LOW_FREE_BYTES = 2 * 1024**3
"""Under this, a disk is low: an hour of 1024² PNGs (about 1.5 MB each) at full speed needs more."""


@dataclass(frozen=True)
class FolderSpace:
    name: str
    path: Path
    existing: Path
    """``path``, or its nearest parent that exists (where it will be created)."""
    free: int
    """Bytes free on the disk that holds ``path`` (or would hold it, once created)."""
    device: int

    @property
    def low(self) -> bool:
        return self.free < LOW_FREE_BYTES

    def describe(self) -> str:
        return f"{free_text(self.free)} free on the disk that holds the {self.name} ({self.path})"

    def record(self) -> dict[str, object]:
        return {"folder": self.name, "path": str(self.path), "free_bytes": self.free}


def folder_space(name: str, path: Path) -> FolderSpace | None:
    """The room under ``path`` or its nearest existing parent; None when nothing of it exists."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    try:
        return FolderSpace(name, path, existing, shutil.disk_usage(existing).free, existing.stat().st_dev)
    except OSError:
        return None


def low_disks(folders: dict[str, Path]) -> list[FolderSpace]:
    """The disks low on room under ``folders`` (name → path), each disk named once."""
    seen: set[int] = set()
    low: list[FolderSpace] = []
    for name, path in folders.items():
        space = folder_space(name, path)
        if space is None or not space.low or space.device in seen:
            continue
        seen.add(space.device)
        low.append(space)
    return low


def free_text(free: int) -> str:
    if free >= 1024**3:
        return f"{free / 1024**3:.1f} GiB"
    return f"{free / 1024**2:.0f} MB"
