"""Which settled files are refused outright, and how that is explained to the user."""

from __future__ import annotations

from dataclasses import replace

from fooocusd.intake.ignore import ACCEPTED_TYPES_TEXT, Kind
from fooocusd.intake.watcher import Ready

_CONFLICT_HINT = (
    "a sync tool kept both versions of a file that was changed in two places. Compare it with the "
    "original, then drop the one you want again under a normal name (or set "
    'intake.conflict_copies = "process" to run conflict copies like any other file)'
)


def refusal_for(item: Ready, conflict_policy: str) -> tuple[str, str] | None:
    """``(reason, hint)`` when ``item`` must go straight to failed/; None when it is takeable."""
    if item.refused:
        return (
            f"{item.relpath} was not opened: {item.reason or 'it is not a regular file'}",
            "put regular files in the inbox; links, FIFOs, sockets and devices are never read",
        )
    if item.kind == Kind.CONFLICT and conflict_policy == "quarantine":
        return (f"{item.relpath} is a sync-tool conflict copy, so it was not run.", _CONFLICT_HINT)
    if item.kind == Kind.UNSUPPORTED:
        return (
            f"{item.relpath}: {item.reason or 'this kind of file is not a job'}",
            f"fooocusd takes {ACCEPTED_TYPES_TEXT}",
        )
    return None


def as_takeable(item: Ready) -> Ready:
    """A conflict copy the user chose to process is treated as the file it would have been."""
    if item.kind == Kind.CONFLICT and item.conflict_kind is not None:
        return replace(item, kind=item.conflict_kind)
    return item
