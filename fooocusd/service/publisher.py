"""Publications (decode, encode, fsync'd writes, journal record) in order, beside the GPU worker.

The worker hands over a publication and goes on rendering. Up to ``depth`` publications may be
outstanding, so every image of a batch is handed over at once and all of them are written while
the next batch renders; handing over one more first waits for the oldest. The worker takes each
outcome back (``settle``) in the order it handed them over, on its own thread, so every failure
comes back together with the context it was handed with, to be charged to the job it belongs to.
``background=False`` runs each publication at once, inline.
"""

from __future__ import annotations

from collections import deque
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
    def __init__(self, *, background: bool, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError("a publisher needs room for at least one publication")
        self.background = background
        self.depth = depth
        self._executor: ThreadPoolExecutor | None = None
        self._outstanding: deque[tuple[C, Future[Any]]] = deque()

    @property
    def busy(self) -> bool:
        """A publication was handed over and its outcome not yet taken."""
        return bool(self._outstanding)

    @property
    def full(self) -> bool:
        """``depth`` publications are outstanding: settle the oldest before handing over another."""
        return len(self._outstanding) >= self.depth

    def submit(self, work: Callable[[], Any], context: C) -> None:
        """Start ``work`` after the publications already handed over; there must be room for it."""
        if self.full:
            raise RuntimeError(f"settle a publication first: {self.depth} are outstanding")
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
        self._outstanding.append((context, future))

    def settle(self, *, wait: bool = True) -> Settled[C] | None:
        """How the oldest outstanding publication ended; ``wait=False``: None unless it has ended."""
        if not self._outstanding:
            return None
        context, future = self._outstanding[0]
        if not wait and not future.done():
            return None
        self._outstanding.popleft()
        error = future.exception()
        if error is not None:
            return Settled(context, error=error)
        return Settled(context, result=future.result())

    def close(self) -> None:
        """Stop the background thread. Settle first: an unsettled publication is waited for and dropped."""
        while self._outstanding:
            self._outstanding.popleft()[1].exception()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
