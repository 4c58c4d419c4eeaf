"""Whether the daemon's model is on the GPU, for ``fooocusd status``: a small file in the state folder.

The daemon writes it when the model leaves the GPU (paused, idle) or cannot get onto it (no room:
another program holds the memory), and removes it when the model is loaded again, at its start and
when it stops. ``status`` reads it only while a daemon holds the state folder, so a file a crash
left behind says nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fooocusd.json_store import read_json_object, write_json_atomically
from fooocusd.service.pause import clock_text

MODEL_FILE_NAME = "model.json"


@dataclass(frozen=True)
class ModelAway:
    why: str
    """"pause", "idle" or "memory" (``EngineRest.resting_for``)."""
    since: float
    detail: str = ""
    """For "memory": what the last load met."""

    def describe(self) -> str:
        when = clock_text(self.since)
        if self.why == "memory":
            return (
                f"not loaded: waiting for room on the GPU since {when} ({self.detail}); no job runs "
                "until it loads, tried again once more memory is free"
            )
        if self.why == "pause":
            return f"unloaded for the pause since {when}; loaded again on resume"
        return f"unloaded since {when}, nothing to do; the next job loads it again"

    def record(self) -> dict[str, Any]:
        return {"why": self.why, "since": self.since, "detail": self.detail}


def model_file(state: Path) -> Path:
    return state / MODEL_FILE_NAME


def record_model_away(state: Path, why: str, detail: str = "", now: float | None = None) -> None:
    away = ModelAway(why, time.time() if now is None else now, detail)
    write_json_atomically(model_file(state), away.record())


def record_model_loaded(state: Path) -> None:
    model_file(state).unlink(missing_ok=True)


def model_away(state: Path) -> ModelAway | None:
    """What the file says; None when it is missing or unreadable (the model is loaded)."""
    data = read_json_object(model_file(state))
    why, since, detail = data.get("why"), data.get("since"), data.get("detail", "")
    if not isinstance(why, str) or not isinstance(since, int | float):
        return None
    return ModelAway(why, float(since), detail if isinstance(detail, str) else "")
