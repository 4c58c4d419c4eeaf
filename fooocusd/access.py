"""Why fooocusd may not read a file or folder: its owner and mode against the user fooocusd runs as.

A file copied in by another account (scp as yourself, a Samba or sync client running as its own
user) often arrives readable by its owner alone, while fooocusd runs as a service user.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from fooocusd.errors import InvalidInput

_DENIED = (errno.EACCES, errno.EPERM)


def cannot_read(path: Path, exc: OSError, what: str = "") -> InvalidInput:
    """``cannot read <what> <name>: <reason>``; for a permission error, with who may read it."""
    hint = unreadable_hint(path) if exc.errno in _DENIED else ""
    label = f"{what} {path.name}" if what else path.name
    return InvalidInput(f"cannot read {label}: {exc.strerror or exc}", where=path.name, hint=hint)


def is_denied(exc: OSError) -> bool:
    return exc.errno in _DENIED


def unreadable_hint(path: Path) -> str:
    """What to do about a permission error reading ``path``, naming its owner, its mode and our user."""
    me = _user(os.geteuid())
    try:
        info = os.lstat(path)
    except OSError:
        return f"let the user fooocusd runs as ({me}) read it"
    is_folder = stat.S_ISDIR(info.st_mode)
    owner = f"{_user(info.st_uid)}:{_group(info.st_gid)}"
    # A file is named alone: by the time the user reads this it is in failed/, not where it was.
    change = f"chmod a+rx {path}" if is_folder else f"chmod a+r {path.name}"
    return (
        f"it belongs to {owner} with mode {stat.S_IMODE(info.st_mode):03o}, and fooocusd runs as {me}: "
        f"make it readable (`{change}`), or have the program that puts files in the inbox create them "
        "readable by others (its umask)"
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
