"""Names that look alike but are spelled apart: Unicode normalisation, and letter case.

``é`` can be stored as one character (NFC, what keyboards type on Linux and Windows) or as ``e``
plus a combining accent (NFD, what macOS writes). Linux compares names byte by byte, so
``café.png`` copied from a Mac by rsync (without ``--iconv``), or saved by Finder onto a Samba
share, is not the ``café.png`` a job file names, nor the partner of a ``café.txt`` typed on
Linux, although both print the same. Names are compared here in NFC, and a written path is
mapped to the spelling the disk has. People used to Windows and macOS, whose disks ignore case,
also write ``cat.png`` for ``Cat.png``: where only one name in a folder matches so, it is that one.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path


def comparable(name: str) -> str:
    """``name`` in the one spelling used to compare names (NFC)."""
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def spelled_on_disk(path: Path, *, any_case: bool = True) -> Path:
    """``path``, with each part that is not on disk as written replaced by the entry of its
    folder that differs from it only in normalisation, else (``any_case``) only in case, where one
    entry does. ``path`` itself when it is there as written, or when no such entry exists (the
    caller then says it is missing)."""
    if os.path.lexists(path):
        return path
    found = Path(path.anchor)
    for part in path.parts[1:] if path.anchor else path.parts:
        candidate = found / part
        if not os.path.lexists(candidate):
            alike = _entry_spelled_alike(found, part, any_case)
            if alike is None:
                return path
            candidate = found / alike
        found = candidate
    return found


def _entry_spelled_alike(folder: Path, part: str, any_case: bool) -> str | None:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    wanted = comparable(part)
    same = [name for name in names if comparable(name) == wanted]
    if same or not any_case:
        return same[0] if same else None
    folded = wanted.casefold()
    alike = [name for name in names if comparable(name).casefold() == folded]
    return alike[0] if len(alike) == 1 else None  # Cat.png and CAT.png: not ours to choose
