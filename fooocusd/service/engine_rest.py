"""Freeing the GPU while fooocusd has nothing to do: paused (``engine.unload_when_paused``), or
idle for a while (``engine.unload_after_idle_seconds``).

People share one GPU between fooocusd and a game, another model or a video render. Once nothing
renders, the paused (or long idle) daemon drops its models from GPU memory. When the pause ends,
it loads them again and warms up, as at start, before the next job begins; after an idle unload,
the next job loads them. The small prompt-expansion model and the CUDA context stay.

The other program may still hold the GPU then, or already at the daemon's start. A load that runs
out of GPU memory frees what it had loaded, and the daemon waits for room (``resting_for`` is
"memory"): it keeps taking files in, runs no job (none would fit), says so once, and looks every
``MEMORY_RETRY_SECONDS``. It tries to load again only once ``ROOM_MARGIN`` more of the GPU's memory
is free than after the failed load: a load that cannot fit would cost a disk read and, while it
lasts, memory the other program may be about to ask for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
from loguru import logger

from fooocusd.engine.base import Engine
from fooocusd.engine.devices import gpu_memory, reserved_memory
from fooocusd.engine.out_of_memory import is_out_of_memory
from fooocusd.errors import FooocusdError, OutOfMemory

Why = Literal["pause", "idle", "memory"]
_GIB = 1024**3
MEMORY_RETRY_SECONDS = 30.0
"""How often a daemon waiting for GPU memory looks whether it may load its model again."""
ROOM_MARGIN = _GIB
"""How much more free GPU memory than after a failed load makes a new try worth it."""


class EngineRest:
    """Unloads ``engine`` (``rest``) and loads it again (``wake``), each only where that changes
    something (a job may load it in between); used from the worker thread only, between jobs."""

    def __init__(
        self,
        engine: Engine,
        load_again: Callable[[], None],
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``load_again``: what the start does to get the engine ready (load, then warm up);
        ``on_change(loaded)`` is told each unload and load (the metrics)."""
        self.engine = engine
        self._load_again = load_again
        self._on_change = on_change or (lambda _loaded: None)
        self._clock = clock
        self.resting_for: Why | None = None
        """Why the models are unloaded now; None while they are loaded."""
        self.no_room = ""
        """While waiting for GPU memory: what the last load met, in words."""
        self._retry_at = 0.0
        self._waiting_since = 0.0
        self._free_after_failure: int | None = None

    def load_at_start(self, load: Callable[[], object], *, wait: bool = True) -> bool:
        """The start's ``load``; False when the GPU had no room for the model: then, with ``wait``,
        the daemon starts without it and waits for room (``wake``), else ``OutOfMemory`` is raised."""
        no_room = self._no_room_for(load)
        if not no_room:
            return True
        if not wait:
            raise OutOfMemory(no_room, hint=_ROOM_HINT)
        self._wait_for_room(no_room)
        return False

    def due(self) -> bool:
        """Whether ``wake`` should be tried now; while waiting for room, at the next look, and only
        if ``ROOM_MARGIN`` more is free than after the failed load (where the GPU says)."""
        if self.resting_for != "memory":
            return True
        if self._clock() < self._retry_at:
            return False
        memory = gpu_memory(self._device())
        if memory is None or self._free_after_failure is None:
            return True
        if memory[0] >= self._free_after_failure + ROOM_MARGIN:
            return True
        self._retry_at = self._clock() + MEMORY_RETRY_SECONDS
        return False

    def rest(self, why: Why, idle_seconds: float = 0.0) -> None:
        """Drop the resident models, unless they are dropped already or the engine cannot."""
        unload: Callable[[], None] | None = getattr(self.engine, "unload", None)
        if unload is None or not self._loaded():
            return
        device = self._device()
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

    def wake(self) -> bool:
        """Load the models again after ``rest`` (or, waiting for room, try again); whether they are
        loaded now. No room: the wait goes on. Another failure is logged, and the next job meets it."""
        why = self.resting_for
        if why is None:
            return True
        if self._loaded():
            self.resting_for, self.no_room = None, ""
            self._on_change(True)
            return True  # a job that came in meanwhile loaded it
        if why != "memory":
            after = "after the pause" if why == "pause" else "for the next job"
            logger.info("loading the model again {}…", after)
        mark = time.perf_counter()
        try:
            no_room = self._no_room_for(self._load_again)
        except FooocusdError as exc:  # the model file went away meanwhile, say: each job says so too
            self.resting_for = None
            logger.error("could not load the model again: {}", exc.explain().splitlines()[0])
            return False
        if no_room:
            self._wait_for_room(no_room)
            return False
        self.resting_for, self.no_room = None, ""
        self._on_change(True)
        if why == "memory":
            waited = self._clock() - self._waiting_since
            logger.info(
                "there is room on the GPU now: the model is loaded, after {} of waiting", _duration(waited)
            )
        else:
            logger.info("the model is loaded again, in {:.1f} s", time.perf_counter() - mark)
        return True

    def _no_room_for(self, load: Callable[[], object]) -> str:
        """Run ``load``; "" when it succeeded, else (the GPU had no room) what it met, in words, with
        whatever it had loaded freed."""
        try:
            load()
        except OutOfMemory:
            pass
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(exc):
                raise
        else:
            return ""
        # Out of the except clause, the failed load's tensors are no longer referenced: free them,
        # so that what is left is what other programs hold.
        unload = getattr(self.engine, "unload", None)
        if unload is not None:
            unload()
        memory = gpu_memory(self._device())
        if memory is None:
            self._free_after_failure = None
            return "the GPU has no room for the model"
        free, total = memory
        self._free_after_failure = free
        return (
            f"the GPU has no room for the model ({free / _GIB:.1f} of {total / _GIB:.1f} GiB free; "
            "other programs hold the rest)"
        )

    def _wait_for_room(self, no_room: str) -> None:
        first = self.resting_for != "memory"
        self.resting_for, self.no_room = "memory", no_room
        self._retry_at = self._clock() + MEMORY_RETRY_SECONDS
        if first:
            self._waiting_since = self._clock()
            self._on_change(False)
            logger.warning(
                "{}: fooocusd keeps taking files in, runs no job, and loads the model once there is "
                "room (it looks every {:.0f} s). {}",
                no_room,
                MEMORY_RETRY_SECONDS,
                _ROOM_HINT[0].upper() + _ROOM_HINT[1:],
            )
        else:
            logger.debug("still no room on the GPU for the model: {}", no_room)

    def _device(self) -> torch.device:
        return torch.device(self.engine.describe().get("device", "cpu"))

    def _loaded(self) -> bool:
        return bool(getattr(self.engine, "is_loaded", True))


_ROOM_HINT = (
    "close the program that holds the GPU's memory, or set engine.vram = 'low' (SDXL in about 2.5 GiB)"
)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"
