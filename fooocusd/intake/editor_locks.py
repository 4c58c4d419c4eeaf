"""Job files open in an editor are taken once the editor lets go of them.

Someone who writes a prompt straight into the inbox saves drafts as they go; taking the first save
would run a draft, and each later save would run again. Editors that mark an open file with a
file beside it are waited for: vim and nano with locking (``.cat.txt.swp``, while the file is
open; Neovim keeps its swap files elsewhere), LibreOffice (``.~lock.cat.txt#``, while it is
open), and Kate (``.cat.txt.kate-swp``) and emacs (``.#cat.txt``) while it has unsaved changes.
A mark left behind by a crash is given up on after ``intake.editor_wait_seconds``.
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKS = (
    (".{}.swp", "vim or nano"),
    (".{}.swo", "vim"),
    (".~lock.{}#", "LibreOffice"),
    (".{}.kate-swp", "Kate"),
    (".#{}", "emacs"),
)


def open_in_editor(path: Path) -> str | None:
    """The editor that marks ``path`` as open, with its mark (``vim or nano (.cat.txt.swp)``); None
    when nothing marks it."""
    for pattern, editor in _MARKS:
        mark = pattern.format(path.name)
        if os.path.lexists(path.with_name(mark)):  # emacs's mark is a link to nowhere
            return f"{editor} ({mark})"
    return None
