"""Files intake could not take or refuse this time (a full disk, a folder it may not write).

They stay in the inbox and are tried again at each rescan. The log says why once per file and
reason, not at every rescan: a disk that stays full for a night would otherwise repeat the same
line for every waiting file twice a minute.
"""

from __future__ import annotations

from loguru import logger

from fooocusd.errors import FooocusdError

REMEMBERED = 10_000
"""At most this many files' reasons are kept; past it, the oldest is forgotten (and may be said again)."""


class IntakeTrouble:
    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def cannot_take(self, relpath: str, exc: OSError | FooocusdError, doing: str = "take {}") -> None:
        """``doing``: what could not be done, ``{}`` standing for the file's name."""
        reason, hint = plain_reason(exc)
        doing = doing.format(relpath)
        if self._said.get(relpath) == reason:
            logger.debug("still cannot {}: {}", doing, reason)
            return
        self._said[relpath] = reason
        if len(self._said) > REMEMBERED:
            del self._said[next(iter(self._said))]
        logger.error(
            "could not {}: {}; {}. It stays in the inbox and is tried again at the next rescan",
            doing,
            reason,
            hint,
        )

    def taken(self, relpath: str) -> None:
        self._said.pop(relpath, None)


def plain_reason(exc: OSError | FooocusdError) -> tuple[str, str]:
    """What went wrong, and what to do about it, in words."""
    if isinstance(exc, FooocusdError):
        return exc.message, exc.hint or "check the disks under the inbox, state and failed folders"
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}", "check the disks under the inbox, state and failed folders"
