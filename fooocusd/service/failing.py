"""Moving a bad input to failed/ with its explanation beside it."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from fooocusd.intake.claim import move_durably, unique_destination
from fooocusd.outbox.atomic import publish_bytes


def error_file_for(moved_input: Path) -> Path:
    return moved_input.with_name(moved_input.name + ".error.txt")


def quarantine(
    files: list[Path], failed_dir: Path, subdir: str, report: str, umask: int, *, reason: str = ""
) -> list[Path]:
    """Move ``files`` into ``failed_dir/subdir`` and write ``<first name>.error.txt``; the log line
    says ``reason`` (the report's gist).

    The explanation is written before the move, so a crash in between leaves the input in
    place (it is simply failed again) rather than a failed input without its reason.
    """
    target = failed_dir / subdir
    target.mkdir(parents=True, exist_ok=True)
    destinations = [unique_destination(target, path.name) for path in files]
    publish_bytes(error_file_for(destinations[0]), report.encode("utf-8"), umask=umask, overwrite=True)
    for number, (source, destination) in enumerate(zip(files, destinations, strict=True)):
        try:
            move_durably(source, destination)
        except FileNotFoundError:
            if number == 0:
                return _let_go(destinations[0])
        except FileExistsError:
            if number == 0 and not (source.exists() or source.is_symlink()):
                return _let_go(destinations[0])
            raise
    names = ", ".join(p.name for p in files)
    logger.warning("failed: {} → {}{}", names, destinations[0].parent, f": {reason}" if reason else "")
    return destinations


def _let_go(first_destination: Path) -> list[Path]:
    """The input was taken meanwhile (another daemon on the same inbox): it is not ours to fail."""
    if not first_destination.exists():  # else the report there belongs to whoever moved it
        error_file_for(first_destination).unlink(missing_ok=True)
    return []
