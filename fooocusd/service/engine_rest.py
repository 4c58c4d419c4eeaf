"""Freeing the GPU while the queue is paused (``engine.unload_when_paused``).

People pause fooocusd to use the GPU for something else: a game, another model, a video render.
Once the job that was running has stopped, the paused daemon drops its models from GPU memory;
when the pause ends it loads them again, and warms up as at start, before the next job begins.
The small prompt-expansion model and the CUDA context stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from loguru import logger

from fooocusd.engine.base import Engine
from fooocusd.engine.devices import reserved_memory
from fooocusd.errors import FooocusdError

_GIB = 1024**3


class EngineRest:
    """Unloads ``engine`` for a pause (``rest``) and loads it again (``wake``), each once; used
    from the worker thread only, between jobs."""

    def __init__(self, engine: Engine, load_again: Callable[[], None]) -> None:
        """``load_again``: what the start does to get the engine ready (load, then warm up)."""
        self.engine = engine
        self._load_again = load_again
        self.resting = False

    def rest(self) -> None:
        """Drop the resident models, unless they are dropped already or the engine cannot."""
        unload: Callable[[], None] | None = getattr(self.engine, "unload", None)
        if self.resting or unload is None:
            return
        device = torch.device(self.engine.describe().get("device", "cpu"))
        before = reserved_memory(device)
        unload()
        self.resting = True
        after = reserved_memory(device)
        freed = ""
        if before is not None and after is not None:
            freed = f" ({(before - after) / _GIB:.1f} GiB of GPU memory freed)"
        logger.info("paused: the model is unloaded{}; it is loaded again when the pause ends", freed)

    def wake(self) -> None:
        """Load the models again after ``rest``; a failure is logged, and the next job meets it."""
        if not self.resting:
            return
        self.resting = False
        logger.info("loading the model again after the pause…")
        mark = time.perf_counter()
        try:
            self._load_again()
        except FooocusdError as exc:  # the model file went away meanwhile, say: each job says so too
            logger.error("could not load the model again: {}", exc.explain().splitlines()[0])
            return
        logger.info("the model is loaded again, in {:.1f} s", time.perf_counter() - mark)
