"""The daemon's folders: where they are, that they exist, and that they don't nest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fooocusd.errors import ConfigError
from fooocusd.intake.layout import check_folder_layout
from fooocusd.service.fstab_mounts import unmounted_mount_above
from fooocusd.settings import ResolvedPaths, Settings


@dataclass(frozen=True)
class Folders:
    inbox: Path
    outbox: Path
    done: Path
    failed: Path
    state: Path
    models: tuple[Path, ...]
    presets: Path | None
    styles: Path | None
    wildcards: Path | None

    @property
    def journal_db(self) -> Path:
        return self.state / "journal.sqlite3"

    @property
    def processing(self) -> Path:
        """Claimed inputs live here, one sub-folder per claim, until they move to done/ or failed/."""
        return self.state / "processing"

    @property
    def kept(self) -> Path:
        return self.state / "kept"

    @property
    def cache(self) -> Path:
        cache = os.environ.get("CACHE_DIRECTORY")  # systemd CacheDirectory=
        return Path(cache.split(":")[0]) if cache else self.state / "cache"

    @classmethod
    def from_paths(cls, paths: ResolvedPaths) -> Folders:
        return cls(**paths.model_dump())


def prepare_folders(settings: Settings) -> Folders:
    """Resolve, check and create every folder. Raises ``ConfigError`` with a clear message."""
    folders = Folders.from_paths(settings.paths.resolved())
    check_folder_layout(settings)
    _refuse_bare_mount_points(folders)
    for path in (
        folders.inbox,
        folders.outbox,
        folders.done,
        folders.failed,
        folders.state,
        folders.processing,
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create folder {path}: {exc.strerror}",
                hint="create it yourself or give the fooocusd user write access to its parent",
            ) from exc
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(
                f"folder {path} is not writable by this user",
                hint="fix its owner or permissions (chown/chmod), or point the setting elsewhere",
            )
    return folders


def _refuse_bare_mount_points(folders: Folders) -> None:
    for name, path in (
        ("inbox", folders.inbox),
        ("outbox", folders.outbox),
        ("done", folders.done),
        ("failed", folders.failed),
        ("state", folders.state),
    ):
        point = unmounted_mount_above(path)
        if point is not None:
            raise ConfigError(
                f"the {name} folder {path} is under {point}, which /etc/fstab lists but is not mounted: "
                "fooocusd would write to the local disk beneath it",
                hint=f"mount it first (`mount {point}`); if the folder is meant to be on this disk, "
                f"move it out from under {point}",
            )
