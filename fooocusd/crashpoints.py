"""Deterministic crash injection for the crash-safety tests.

``FOOOCUSD_CRASH_AT=<point>[:<n>]`` makes the process SIGKILL itself the n-th time (default 1st)
it reaches ``crashpoint(<point>)``. Unset in normal use, where a crashpoint is one dict lookup.
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("FOOOCUSD_CRASH_AT", "")
_POINT, _, _NTH = _TARGET.partition(":")
_hits = 0


def crashpoint(name: str) -> None:
    global _hits
    if not _POINT or name != _POINT:
        return
    _hits += 1
    if _hits >= int(_NTH or 1):
        os.kill(os.getpid(), signal.SIGKILL)
