"""Per-step scheduler noise without a blocking host→device copy.

Ancestral and SDE schedulers draw fresh noise inside ``step`` with diffusers' ``randn_tensor``. With
the loop's seeded CPU generator and a CUDA device, that draws on the CPU into ordinary (pageable)
memory and copies it with a plain ``.to(device)``: a copy from pageable memory makes the host wait
until the GPU has finished everything queued before it, once per step.

``noise_pinned_step(scheduler)`` returns the scheduler's ``step`` with that draw changed in one
respect only: the same ``randn_tensor`` call runs on the CPU (so the values are exactly those of
today, for one generator or a list of per-image generators), is placed in pinned memory and is
copied with ``non_blocking=True``, which queues the copy behind the running kernels without
waiting. PyTorch's pinned-memory cache keeps the buffer alive until the copy has run.

The change is scoped: diffusers' scheduler modules get a pass-through ``randn_tensor`` that behaves
differently only inside a call made through ``noise_pinned_step`` and only for CPU generators with a
CUDA device; everywhere else (other pipelines, CPU runs, device generators) it is diffusers' own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch
from diffusers import SchedulerMixin
from diffusers.utils import torch_utils

_diffusers_randn_tensor = torch_utils.randn_tensor
_pinning: ContextVar[bool] = ContextVar("fooocusd_pinned_step_noise", default=False)


def pinned_randn_tensor(
    shape: tuple[int, ...] | list[int],
    generator: list[torch.Generator] | torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
) -> torch.Tensor:
    """diffusers' ``randn_tensor``; inside ``noise_pinned_step``, copied to CUDA from pinned memory."""
    target = torch.device(device) if device is not None else None
    if not (_pinning.get() and target is not None and target.type == "cuda" and _on_cpu(generator)):
        return _diffusers_randn_tensor(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    host = _diffusers_randn_tensor(shape, generator=generator, device="cpu", dtype=dtype, layout=layout)
    return host.pin_memory().to(target, non_blocking=True)


def noise_pinned_step(scheduler: SchedulerMixin) -> Callable[..., Any]:
    """``scheduler.step`` whose per-step noise reaches the device without a blocking copy."""
    _install(type(scheduler))
    step = scheduler.step

    def pinned_step(*args: Any, **kwargs: Any) -> Any:
        token = _pinning.set(True)
        try:
            return step(*args, **kwargs)
        finally:
            _pinning.reset(token)

    return pinned_step


def _on_cpu(generator: list[torch.Generator] | torch.Generator | None) -> bool:
    if generator is None:
        return False
    first = generator[0] if isinstance(generator, list) else generator
    return first.device.type == "cpu"


def _install(scheduler_class: type) -> None:
    """Route the ``randn_tensor`` of every diffusers module ``scheduler_class`` is built from through us."""
    for cls in scheduler_class.__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "randn_tensor", None) is _diffusers_randn_tensor:
            module.randn_tensor = pinned_randn_tensor  # type: ignore[attr-defined]
