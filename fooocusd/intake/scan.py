"""The files under an inbox folder that intake would handle: the watcher's rescans and ``status``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from fooocusd.access import is_denied, unreadable_hint
from fooocusd.intake.ignore import Kind, classify_dir, classify_name


def candidate_files(inbox: Path, top: Path, extra_ignore: Sequence[str] = ()) -> list[Path]:
    """Candidate files under ``top`` inside ``inbox`` (not descending into ignored folders or
    folder links); ignored names left out."""
    found: list[Path] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    path = Path(entry.path)
                    relpath = path.relative_to(inbox).as_posix()
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        if classify_dir(relpath, extra_ignore) is None:
                            stack.append(path)
                    elif classify_name(relpath, extra_ignore).kind is not Kind.IGNORE:
                        found.append(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            _cannot_list(folder, exc)
            continue
        _UNLISTABLE.pop(folder, None)
    return found


_UNLISTABLE: dict[Path, str] = {}
"""Folders said to be unlistable, with why: said once, not at every rescan, until it changes."""


def _cannot_list(folder: Path, exc: OSError) -> None:
    reason = exc.strerror or str(exc)
    if _UNLISTABLE.get(folder) == reason:
        return
    _UNLISTABLE[folder] = reason
    hint = unreadable_hint(folder) if is_denied(exc) else "check the disk"
    logger.warning("cannot look in {}: {}; files there are not seen. How to fix: {}", folder, reason, hint)
