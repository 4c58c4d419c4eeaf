"""One publication (encode, fsync'd writes, journal record) at a time, beside the GPU worker.

The worker hands over a publication and goes on rendering; before it hands over the next one it
takes the outcome of the previous one (``settle``). So at most one finished image waits in memory,
and every failure comes back to the worker thread together with the context it was handed with,
to be charged to the job it belongs to. ``background=False`` runs each publication at once, inline.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True)
class Settled(Generic[C]):
    """How a publication ended: its ``result``, or the ``error`` it raised."""

    context: C
    result: Any = None
    error: BaseException | None = None


class Publisher(Generic[C]):
    def __init__(self, *, background: bool) -> None:
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._outstanding: tuple[C, Future[Any]] | None = None

    @property
    def busy(self) -> bool:
        """A publication was handed over and its outcome not yet taken."""
        return self._outstanding is not None

    def submit(self, work: Callable[[], Any], context: C) -> None:
        """Start ``work``; the previous publication must have been settled first."""
        if self._outstanding is not None:
            raise RuntimeError("settle the previous publication before handing over the next one")
        future: Future[Any]
        if self.background:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fooocusd-publisher")
            future = self._executor.submit(work)
        else:
            future = Future()
            try:
                future.set_result(work())
            except Exception as exc:
                future.set_exception(exc)
        self._outstanding = (context, future)

    def settle(self) -> Settled[C] | None:
        """Wait for the outstanding publication, if any, and return how it ended."""
        if self._outstanding is None:
            return None
        context, future = self._outstanding
        self._outstanding = None
        error = future.exception()
        if error is not None:
            return Settled(context, error=error)
        return Settled(context, result=future.result())

    def close(self) -> None:
        """Stop the background thread. Settle first: an unsettled publication is waited for and dropped."""
        if self._outstanding is not None:
            self._outstanding[1].exception()
            self._outstanding = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
