"""Inbox names that are not valid UTF-8, or that hold control characters, are renamed first.

Names that are not UTF-8 come from tools that write another character set: a zip made on Windows
and unpacked with plain ``unzip``, an SMB or FAT mount without ``iocharset=utf8``, rsync from an old
Latin-1 system. Python carries their stray bytes as lone surrogates, which SQLite, JSON sidecars,
hooks and error files cannot store, so such a file could never be taken or refused. A control
character (a newline in a name) would split the log line that names the file, or forge one.
Renaming the file in place, each stray byte or control character becoming U+FFFD, lets it run like
any other file; the log says what the old name was. Mapping byte by byte, never guessing the
character set, keeps a picture and its job file paired.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from fooocusd.durable import fsync_folder
from fooocusd.intake.claim import unique_destination

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_readable(name: str) -> bool:
    """True when ``name`` (as ``os.fsdecode`` gives it) is valid UTF-8 without control characters,
    so it can be stored and logged anywhere."""
    return _is_utf8(name) and _CONTROL.search(name) is None


def why_unreadable(name: str) -> str:
    """Why ``name`` gets renamed, in words."""
    if not _is_utf8(name):
        return "its name is not valid UTF-8 (written by a tool using another character set)"
    return "its name holds a control character (a newline, a tab), which would break the log's lines"


def _is_utf8(name: str) -> bool:
    """False for a name with stray bytes, which ``os.fsdecode`` carries as lone surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def readable(name: str) -> str:
    """``name`` with each byte that is not UTF-8, and each control character, replaced by U+FFFD."""
    return _CONTROL.sub("\ufffd", os.fsencode(name).decode("utf-8", errors="replace"))


def shown(name: str) -> str:
    """``name`` for messages: its stray bytes and control characters written as ``\\xe9`` or
    ``\\n``, so the user can find the file and the message stays on one line."""
    decoded = os.fsencode(name).decode("utf-8", errors="backslashreplace")
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], decoded)


def rename_readable(inbox: Path, relpath: str) -> Path:
    """Rename the topmost part of ``relpath`` (a folder, or the file itself) whose name is not
    readable (``is_readable``) to its readable form, or the next free ``name-N`` variant. Returns
    the new path of that part.

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
