"""What still waits in the inbox, for ``fooocusd status``.

A claimed file leaves the inbox (``claim.py``), so every file still there that intake would not
ignore is waiting: settling, not yet seen by a daemon that is not running, or empty. An empty file
(a sync tool's placeholder, a file created before its content is written) waits until it has
content and may never get any, and a job file open in an editor (``editor_locks``) waits until
the editor closes it, which is why status names those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from fooocusd.intake.editor_locks import open_in_editor
from fooocusd.intake.ignore import JOB_EXTENSIONS
from fooocusd.intake.readable_names import shown
from fooocusd.intake.scan import candidate_files

NAMES_SHOWN = 10
"""At most this many empty files are named; the count covers them all."""


@dataclass(frozen=True)
class InboxWaiting:
    files: int = 0
    empty: list[str] = field(default_factory=list)
    """Paths relative to the inbox of the empty files, the first ``NAMES_SHOWN``, as ``shown``
    writes them (a byte that is not UTF-8 as ``\\xe9``, a newline as ``\\n``)."""
    empty_count: int = 0
    in_editor: list[str] = field(default_factory=list)
    """The job files an editor marks as open, as ``cat.txt in vim or nano (.cat.txt.swp)``."""

    def record(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "empty": self.empty,
            "empty_count": self.empty_count,
            "in_editor": self.in_editor,
        }


def inbox_waiting(inbox: Path, extra_patterns: Sequence[str] = ()) -> InboxWaiting:
    """Count the inbox's files intake would handle, and find the empty ones."""
    files, empty, in_editor = 0, [], []
    for path in sorted(candidate_files(inbox, inbox, extra_patterns)):
        try:
            stat = path.lstat()
        except OSError:  # claimed or removed meanwhile
            continue
        if not S_ISREG(stat.st_mode):
            continue
        files += 1
        relpath = path.relative_to(inbox).as_posix()
        if stat.st_size == 0:
            empty.append(shown(relpath))
        editor = open_in_editor(path) if path.suffix.lower() in JOB_EXTENSIONS else None
        if editor is not None:
            in_editor.append(f"{shown(relpath)} in {editor}")
    return InboxWaiting(files, empty[:NAMES_SHOWN], len(empty), in_editor[:NAMES_SHOWN])
