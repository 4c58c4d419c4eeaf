"""Pausing the queue: ``fooocusd pause`` writes a flag file in the state folder, ``resume`` removes it.

While the flag stands, the daemon keeps taking files in (they are checked and queued, or refused)
but starts no job; one it is running stops after its current image and goes back to the queue,
its finished images kept. A flag with an end time lapses by itself. Being a file, a pause holds
across restarts and reboots, and the commands need no running daemon.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fooocusd.errors import InvalidInput
from fooocusd.json_store import read_json_object, write_json_atomically

PAUSE_FILE_NAME = "paused.json"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_SECONDS_PER_UNIT = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass(frozen=True)
class Pause:
    since: float
    until: float | None
    """When it lapses by itself; None: until ``fooocusd resume``."""

    def describe(self) -> str:
        """``paused since 14:02 until 16:02`` (dates shown when not today)."""
        text = f"paused since {clock_text(self.since)}"
        return text + (f" until {clock_text(self.until)}" if self.until is not None else "")

    def record(self) -> dict[str, float | None]:
        return {"since": self.since, "until": self.until}


def pause_file(state: Path) -> Path:
    return state / PAUSE_FILE_NAME


def current_pause(state: Path, now: float | None = None) -> Pause | None:
    """The pause in force at ``now``; None when there is none, or it has lapsed."""
    path = pause_file(state)
    if not path.exists():
        return None
    data = read_json_object(path)
    since = data.get("since")
    until = data.get("until")
    if not isinstance(since, int | float):
        try:
            since = path.stat().st_mtime
        except FileNotFoundError:  # resumed between the two looks
            return None
    pause = Pause(
        since=float(since),
        until=float(until) if isinstance(until, int | float) else None,
    )
    moment = time.time() if now is None else now
    return None if pause.until is not None and pause.until <= moment else pause


def pause_queue(state: Path, seconds: float | None, now: float | None = None) -> Pause:
    """Pause from ``now``, for ``seconds`` (None: until resumed). Replaces a pause in force."""
    moment = time.time() if now is None else now
    pause = Pause(since=moment, until=None if seconds is None else moment + seconds)
    write_json_atomically(pause_file(state), pause.record())
    return pause


def resume_queue(state: Path, now: float | None = None) -> Pause | None:
    """End the pause; the one that was in force, if any."""
    ended = current_pause(state, now)
    pause_file(state).unlink(missing_ok=True)
    return ended


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m`` or ``1d`` → seconds."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise InvalidInput(
            f"{text!r} is not a duration",
            hint="write it as a number and a unit: 90s, 30m, 2h, 1h30m or 1d",
        )
    seconds = sum(float(number) * _SECONDS_PER_UNIT[unit.lower()] for number, unit in parts)
    if seconds <= 0:
        raise InvalidInput(f"{text!r} is no time at all", hint="give a duration longer than zero, e.g. 30m")
    return seconds


def clock_text(moment: float) -> str:
    """``14:02`` today, ``2026-11-28 14:02`` on another day."""
    stamp = datetime.fromtimestamp(moment)
    return f"{stamp:%H:%M}" if stamp.date() == datetime.now().date() else f"{stamp:%Y-%m-%d %H:%M}"
