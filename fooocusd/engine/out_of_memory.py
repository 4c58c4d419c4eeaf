"""An accelerator running out of memory during a render → a retryable ``OutOfMemory``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from fooocusd.engine.base import GenerationRequest
from fooocusd.errors import OutOfMemory


@contextlib.contextmanager
def out_of_memory_retryable(request: GenerationRequest, free_memory: Callable[[], None]) -> Iterator[None]:
    """While open, a CUDA OOM (or another backend's "out of memory" RuntimeError) frees memory and
    becomes ``OutOfMemory``, which the worker retries; any other error passes unchanged."""
    try:
        yield
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
        if not is_out_of_memory(exc):
            raise
        free_memory()
        raise out_of_memory(request, exc) from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA OOM, or another backend's "out of memory" RuntimeError."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def out_of_memory(request: GenerationRequest, exc: BaseException) -> OutOfMemory:
    return OutOfMemory(
        f"the accelerator ran out of memory rendering {request.width}x{request.height}: {exc}",
        hint="the job is retried after freeing memory; if it keeps failing, close other GPU programs, "
        "use a smaller size, or set engine.dtype = 'float16'",
    )
