"""Freeing the GPU while fooocusd has nothing to do: paused (``engine.unload_when_paused``), or
idle for a while (``engine.unload_after_idle_seconds``).

People share one GPU between fooocusd and a game, another model or a video render. Once nothing
renders, the paused (or long idle) daemon drops its models from GPU memory. When the pause ends,
it loads them again and warms up, as at start, before the next job begins; after an idle unload,
the next job loads them. The small prompt-expansion model and the CUDA context stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
from loguru import logger

from fooocusd.engine.base import Engine
from fooocusd.engine.devices import reserved_memory
from fooocusd.errors import FooocusdError

Why = Literal["pause", "idle"]
_GIB = 1024**3


class EngineRest:
    """Unloads ``engine`` (``rest``) and loads it again (``wake``), each only where that changes
    something (a job may load it in between); used from the worker thread only, between jobs."""

    def __init__(
        self,
        engine: Engine,
        load_again: Callable[[], None],
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``load_again``: what the start does to get the engine ready (load, then warm up);
        ``on_change(loaded)`` is told each unload and load (the metrics)."""
        self.engine = engine
        self._load_again = load_again
        self._on_change = on_change or (lambda _loaded: None)
        self.resting_for: Why | None = None
        """Why the models are unloaded now; None while they are loaded."""

    def rest(self, why: Why, idle_seconds: float = 0.0) -> None:
        """Drop the resident models, unless they are dropped already or the engine cannot."""
        unload: Callable[[], None] | None = getattr(self.engine, "unload", None)
        if unload is None or not self._loaded():
            return
        device = torch.device(self.engine.describe().get("device", "cpu"))
        before = reserved_memory(device)
        unload()
        self.resting_for = why
        self._on_change(False)
        after = reserved_memory(device)
        freed = ""
        if before is not None and after is not None:
            freed = f" ({(before - after) / _GIB:.1f} GiB of GPU memory freed)"
        if why == "pause":
            logger.info("paused: the model is unloaded{}; it is loaded again when the pause ends", freed)
        else:
            logger.info(
                "idle for {}: the model is unloaded{}; it is loaded again for the next job",
                _duration(idle_seconds),
                freed,
            )

    def wake(self) -> None:
        """Load the models again after ``rest``; a failure is logged, and the next job meets it."""
        why = self.resting_for
        if why is None:
            return
        self.resting_for = None
        if self._loaded():
            self._on_change(True)
            return  # a job that came in meanwhile loaded it
        logger.info(
            "loading the model again {}…", "after the pause" if why == "pause" else "for the next job"
        )
        mark = time.perf_counter()
        try:
            self._load_again()
        except FooocusdError as exc:  # the model file went away meanwhile, say: each job says so too
            logger.error("could not load the model again: {}", exc.explain().splitlines()[0])
            return
        self._on_change(True)
        logger.info("the model is loaded again, in {:.1f} s", time.perf_counter() - mark)

    def _loaded(self) -> bool:
        return bool(getattr(self.engine, "is_loaded", True))


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"
