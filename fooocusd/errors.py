"""Error types shared by every layer.

The split matters to the journal: an ``InvalidInput`` is never retried and sends the
input to ``failed/``; a ``TransientError`` is retried with backoff.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FooocusdError(Exception):
    """Base class. ``hint`` tells the user how to fix it; ``where`` points at the place."""

    def __init__(self, message: str, *, hint: str = "", where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def explain(self) -> str:
        """A plain-language, multi-line explanation for error files and logs."""
        lines = [self.message]
        if self.where:
            lines.append(f"Where: {self.where}")
        if self.hint:
            lines.append(f"How to fix: {self.hint}")
        return "\n".join(lines)


class InvalidInput(FooocusdError):
    """The dropped file (or its content) can never succeed as it is. Never retried."""


class TransientError(FooocusdError):
    """Something outside the input went wrong (disk full, device busy). Retried with backoff."""


class DiskWait(TransientError):
    """A disk refused a write for now, which left nothing behind. Inside the daemon the write waits
    and is tried again (``space_wait.py``) instead of failing its job."""

    waiting_for = "the disk"
    """What the wait is for, in words: "waiting for <waiting_for>"."""
    until = "the disk takes writes again"
    """When the wait ends, in words: "carries on by itself when <until>"."""


class DiskFull(DiskWait):
    """No room on a disk for a write."""

    waiting_for = "room"
    until = "there is room"


class ShareGone(DiskWait):
    """A network share (NFS, SMB, sshfs) stopped answering: it went away, or its server did."""

    waiting_for = "the share"
    until = "the share answers again"


class OutOfMemory(TransientError):
    """The accelerator ran out of memory; retried after the engine frees memory."""


class GpuLost(FooocusdError):
    """The GPU can run nothing more in this process (a sticky CUDA error: an illegal memory access,
    a driver fault, an Xid): the daemon stops, so that a fresh start gets a working GPU."""


class ConfigError(FooocusdError):
    """The configuration is invalid; the daemon refuses to start (or to reload)."""


class ModelNotFound(ConfigError):
    """No usable checkpoint; the message says where to put one."""


class Interrupted(FooocusdError):
    """The engine stopped early because shutdown was requested. The job is requeued, not failed."""


class Paused(Interrupted):
    """``fooocusd pause``: the job stopped after an image and is requeued, its images kept."""


def suggest(
    name: str, known: Iterable[str], *, cutoff: float = 0.6, limit: int = 3, ignore_case: bool = False
) -> str:
    """`` — did you mean 'negative'?`` for the known names closest to ``name``, or an empty string.

    With ``ignore_case`` the comparison is made in lower case, and the names are shown as known.
    """
    spelled = {(item.lower() if ignore_case else item): item for item in known}
    wanted = name.lower() if ignore_case else name
    matches = difflib.get_close_matches(wanted, list(spelled), n=limit, cutoff=cutoff)
    close = [spelled[match] for match in matches]
    if not close:
        return ""
    return " — did you mean " + " or ".join(f"'{match}'" for match in close) + "?"


def shown_value(value: object, limit: int = 80) -> str:
    """``value`` as a message quotes it (``repr``), cut short when long: a 30,000-character
    prompt must not fill the log, the journal and the error file."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        size = f"{len(value):,} characters"
    elif isinstance(value, list | tuple | dict):
        size = f"{len(value):,} entries"
    else:
        size = f"{len(text):,} characters written"
    return f"{text[: limit - 1]}… ({size})"
