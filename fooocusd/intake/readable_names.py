"""Inbox names that are not valid UTF-8 are renamed before they are taken.

Such names come from tools that write another character set: a zip made on Windows and unpacked
with plain ``unzip``, an SMB or FAT mount without ``iocharset=utf8``, rsync from an old Latin-1
system. Python carries their stray bytes as lone surrogates, which SQLite, JSON sidecars, hooks and
error files cannot store, so such a file could never be taken or refused. Renaming it in place, each
stray byte becoming U+FFFD, lets it run like any other file; the log says what the old name was.
Mapping byte by byte, never guessing the character set, keeps a picture and its job file paired.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from fooocusd.durable import fsync_folder
from fooocusd.intake.claim import unique_destination


def is_readable(name: str) -> bool:
    """True when ``name`` (as ``os.fsdecode`` gives it) is valid UTF-8, so it can be stored anywhere."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def readable(name: str) -> str:
    """``name`` with each byte that is not UTF-8 replaced by U+FFFD."""
    return os.fsencode(name).decode("utf-8", errors="replace")


def shown(name: str) -> str:
    """``name`` for messages: its stray bytes written as ``\\xe9``, so the user can find the file."""
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def rename_readable(inbox: Path, relpath: str) -> Path:
    """Rename the topmost part of ``relpath`` (a folder, or the file itself) whose name is not UTF-8
    to its readable form, or the next free ``name-N`` variant. Returns the new path of that part.

    Raises ``FileNotFoundError`` when it is gone (a folder above it was renamed meanwhile), and
    ``ValueError`` when every part is readable."""
    parts = PurePosixPath(relpath).parts
    for depth, part in enumerate(parts):
        if is_readable(part):
            continue
        old = inbox.joinpath(*parts[: depth + 1])
        new = unique_destination(old.parent, readable(part))
        os.rename(old, new)  # same folder: atomic; a name taken in the meantime is a race we accept
        fsync_folder(old.parent)
        return new
    raise ValueError(f"{relpath} has a readable name")
