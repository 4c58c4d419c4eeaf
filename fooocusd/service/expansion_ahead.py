"""Prompt expansion for the next queued jobs, on a thread of its own, while the current batch renders.

Expanding a "Fooocus V2" prompt runs a GPT-2-class model one token at a time: tens of milliseconds
to half a second per image on a GPU, seconds on a CPU. Done while preparing a job, it sits between
two renders. Here, before each render, the worker offers the jobs it will claim next
(``Journal.next_runnable_jobs``, not claimed); this thread runs their expansions
(``job_prep.expand_ahead`` inside ``PromptExpansion.ahead()``), which are remembered, so that
preparing those jobs later finds them done. Nothing is claimed or written here: a job that is
cancelled, taken by another process or changed by a reload meanwhile only costs a wasted expansion,
and an expansion a job needs now goes first.

``engine.expand_ahead``: "on" and "off" always and never; "auto" is off. On an H100 the daemon's
queue of expanded jobs was slower with it than with each expansion run when its job is prepared
(1.76 against 1.42 s per image with CUDA graphs, 1.81 against 1.57 without; docs/benchmarks.md):
the expansion's one-token steps on their own CUDA stream and its host loop compete with the render
for the GPU and the interpreter, and cost more than the 64 ms an expansion takes in between.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable

from loguru import logger

from fooocusd.engine.expansion import PromptExpansion
from fooocusd.journal.rows import JobRow
from fooocusd.service.job_prep import PrepContext, expand_ahead

REMEMBERED_OFFERS = 1024
"""Jobs already offered that are not offered again (their expansions are remembered)."""
CLOSE_TIMEOUT_SECONDS = 30.0


def expands_ahead(setting: str, expansion: PromptExpansion | None) -> bool:
    """Whether ``engine.expand_ahead = setting`` runs expansions ahead with this expansion."""
    return setting == "on" and expansion is not None and expansion.enabled  # "auto" is off


class ExpansionAhead:
    """One thread that expands the prompts of offered jobs, oldest offer first."""

    def __init__(self, expansion: PromptExpansion) -> None:
        self.expansion = expansion
        self._offers: queue.SimpleQueue[tuple[JobRow, PrepContext] | None] = queue.SimpleQueue()
        self._offered: OrderedDict[int, None] = OrderedDict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fooocusd-expansion-ahead", daemon=True)
        self._thread.start()

    def offer(self, jobs: Iterable[JobRow], context: PrepContext) -> None:
        """Expand these jobs' prompts soon (each job once)."""
        for job in jobs:
            if job.id in self._offered:
                continue
            self._offered[job.id] = None
            while len(self._offered) > REMEMBERED_OFFERS:
                self._offered.popitem(last=False)
            self._offers.put((job, context))

    def close(self) -> None:
        """Stop after the expansion in progress (offers not started are dropped)."""
        self._stop.set()
        self._offers.put(None)
        self._thread.join(CLOSE_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            logger.warning("the expansion-ahead thread did not stop within {:.0f} s", CLOSE_TIMEOUT_SECONDS)

    def _run(self) -> None:
        while not self._stop.is_set():
            offer = self._offers.get()
            if offer is None or self._stop.is_set():
                return
            job, context = offer
            with self.expansion.ahead():
                expand_ahead(job, context)  # never raises: a failing job meets its error when prepared
