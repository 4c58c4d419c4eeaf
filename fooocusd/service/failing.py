"""Moving a bad input to failed/ with its explanation beside it."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from fooocusd.intake.claim import move_durably, unique_destination
from fooocusd.outbox.atomic import publish_bytes


def error_file_for(moved_input: Path) -> Path:
    return moved_input.with_name(moved_input.name + ".error.txt")


def quarantine(files: list[Path], failed_dir: Path, subdir: str, report: str, umask: int) -> list[Path]:
    """Move ``files`` into ``failed_dir/subdir`` and write ``<first name>.error.txt``.

    The explanation is written before the move, so a crash in between leaves the input in
    place (it is simply failed again) rather than a failed input without its reason.
    """
    target = failed_dir / subdir
    target.mkdir(parents=True, exist_ok=True)
    destinations = [unique_destination(target, path.name) for path in files]
    publish_bytes(error_file_for(destinations[0]), report.encode("utf-8"), umask=umask, overwrite=True)
    for source, destination in zip(files, destinations, strict=True):
        if source.exists() or source.is_symlink():
            move_durably(source, destination)
    logger.warning("failed: {} → {}", ", ".join(p.name for p in files), destinations[0].parent)
    return destinations
