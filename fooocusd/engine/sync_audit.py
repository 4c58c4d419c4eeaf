"""Finding host↔device synchronisations in the denoising loop, on a machine without a GPU.

Why it matters: on a GPU every kernel is queued and the host races ahead. Anything that needs a
*value* of a device tensor on the host (``.item()``, ``.tolist()``, ``if tensor``, ``float(tensor)``,
``nonzero`` and boolean masks whose output size depends on the data, a copy to the CPU) or a blocking
copy from ordinary (pageable) host memory to the device (``torch.tensor(..., device=cuda)``, noise
drawn on a CPU generator and then ``.to(cuda)``) makes the host wait until the GPU has finished all
queued work. One such wait per step costs launch overlap, and it makes CUDA-graph capture impossible.

Method: a *virtual device*. ``HostSyncAudit`` is a ``TorchFunctionMode`` that pretends ``device``
(``cuda`` by default) exists. Every factory call or ``.to()`` aimed at that device runs on the CPU
instead, and the resulting tensor is marked as living on the device; marks spread to every result
of an operation that had a marked input, and ``tensor.device`` / ``is_cuda`` answer as the GPU
would. Scheduler code therefore takes the same branches it takes on a GPU (``randn_tensor`` sees a
CPU generator and a cuda device, for instance) while every value stays real, so the audited run's
latents equal a plain CPU run bit for bit. Each operation that would synchronise on a real device
is recorded as a ``HostSync`` with the source line that caused it:

- *device→host read*: ``item``, ``tolist``, ``numpy``, ``bool``/``float``/``int``/``index``, a copy
  to the CPU, a marked tensor used to index a host tensor;
- *data-dependent shape*: ``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing ...;
- *error check*: ``torch.linalg`` solvers that read an error flag back (``linalg.solve``, ``inv``);
- *blocking host→device copy*: a host tensor or Python data copied to the device, unless the copy is
  ``non_blocking`` from pinned memory (``pin_memory()`` is simulated when no GPU is present);
- *device mismatch*: a host tensor with elements (not a 0-dim scalar) mixed into a device operation,
  which a real GPU refuses.

Limits: torch functions implemented in Python are seen as one call (what they do inside is not
inspected, only their results are marked); C++ code that reads values without going through a torch
function is invisible. Code may declare an intended read with ``expected_host_read(reason)``; the
audit then records it with that reason instead of treating it as a finding. Outside an audit that
context manager does nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

_ON_DEVICE = "_fooocusd_on_virtual_device"
_PINNED = "_fooocusd_virtually_pinned"
_expected_reason: ContextVar[str | None] = ContextVar("fooocusd_expected_host_read", default=None)

_VALUE_READS = frozenset(
    {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__", "__repr__"}
)
_DATA_DEPENDENT = frozenset(
    {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose"}
)
_ERROR_CHECKED = frozenset(
    {
        "linalg_solve",
        "linalg_inv",
        "linalg_cholesky",
        "linalg_lu_factor",
        "linalg_lstsq",
        "inverse",
        "cholesky",
    }
)
_HOST_DATA_FACTORIES = frozenset({"tensor", "as_tensor", "asarray"})
_MOVES = frozenset({"to", "cpu", "cuda"})


@dataclass(frozen=True)
class HostSync:
    """One operation that would make the host wait for the device."""

    kind: str
    operation: str
    phase: str
    step: int
    where: str
    expected: str | None = None

    def __str__(self) -> str:
        why = f" (expected: {self.expected})" if self.expected else ""
        return f"[{self.phase}, step {self.step}] {self.kind}: {self.operation} at {self.where}{why}"


@contextmanager
def expected_host_read(reason: str) -> Iterator[None]:
    """Declare that the reads inside are intended (e.g. one copy of the schedule before a loop)."""
    token = _expected_reason.set(reason)
    try:
        yield
    finally:
        _expected_reason.reset(token)


def _marked(value: object) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, _ON_DEVICE, False)


def on_virtual_device(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is host memory that an audit presents as the device's: code that hands
    raw pointers to a device kernel (Triton) must not take it for device memory."""
    return _marked(tensor)


def _mark(value: object, attribute: str = _ON_DEVICE) -> None:
    for leaf in tree_flatten(value)[0]:
        if isinstance(leaf, torch.Tensor):
            setattr(leaf, attribute, True)


class HostSyncAudit(TorchFunctionMode):
    """Run code as if ``device`` were present, recording every host↔device synchronisation.

    Use as a context manager around the code under test; pass ``device`` where that code asks for
    a device. ``phase(label)`` labels what follows; ``step_done`` is a progress callback that counts
    steps, so each finding says which step caused it.
    """

    def __init__(self, device: torch.device | str = "cuda") -> None:
        super().__init__()
        self.device = torch.device(device)
        if self.device.type == "cpu":
            raise ValueError("the audited device must not be the CPU, which is the host")
        self.events: list[HostSync] = []
        self.step = 0
        self._phase = "setup"

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        previous, self._phase, self.step = self._phase, label, 0
        try:
            yield
        finally:
            self._phase = previous

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Treat ``module``'s parameters and buffers as loaded on the device (they stay where they are)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            setattr(tensor, _ON_DEVICE, True)
        return module

    def step_done(self, done: int, total: int) -> None:
        self.step = done

    def findings(self, phase: str | None = None) -> list[HostSync]:
        """Synchronisations nobody declared as expected (in ``phase``, or anywhere)."""
        return [e for e in self.events if e.expected is None and phase in (None, e.phase)]

    def expected(self, phase: str | None = None) -> list[HostSync]:
        return [e for e in self.events if e.expected is not None and phase in (None, e.phase)]

    # --- the mode ---------------------------------------------------------------------------

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", repr(func))
        descriptor = getattr(func, "__self__", None)
        if name == "__get__" and args and _marked(args[0]):
            attribute = getattr(descriptor, "__name__", "")
            if attribute == "device":
                return self.device
            if attribute in ("is_cuda", "is_cpu"):
                return (attribute == "is_cuda") == (self.device.type == "cuda")
        if name in ("pin_memory", "is_pinned") and not torch.cuda.is_available():
            return self._simulated_pinning(name, args[0])

        source_on_device = any(_marked(leaf) for leaf in tree_flatten((args, kwargs))[0])
        creates_on_device = self._redirect_devices(name, args, kwargs)
        if name in _MOVES and args and isinstance(args[0], torch.Tensor):
            return self._move(func, name, args, kwargs)
        if "pin_memory" in kwargs and kwargs["pin_memory"] and not torch.cuda.is_available():
            kwargs["pin_memory"] = False
            result = func(*args, **kwargs)
            _mark(result, _PINNED)
            return result
        if creates_on_device and name in _HOST_DATA_FACTORIES:
            self._record("blocking host→device copy", name)
        if source_on_device:
            self._inspect(func, name, args, kwargs)
        result = func(*args, **kwargs)
        if source_on_device or creates_on_device:
            _mark(result)
        return result

    def _redirect_devices(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Send factory calls aimed at the virtual device to the CPU; True when there was one."""
        target = kwargs.get("device")
        if target is None or name in _MOVES:
            return False
        if torch.device(target).type != self.device.type:
            return False
        kwargs["device"] = "cpu"
        return True

    def _move(
        self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        source, rest = args[0], list(args[1:])
        target: torch.device | None
        if name == "cpu":
            target = torch.device("cpu")
        elif name == "cuda":
            target = self.device
        else:
            target = self._move_target(rest, kwargs)
        source_on_device = _marked(source)
        to_device = target is not None and target.type == self.device.type
        to_host = target is not None and target.type == "cpu"
        if to_device:
            kwargs["device"] = "cpu"
            if not source_on_device:
                asynchronous = kwargs.get("non_blocking", False) and getattr(source, _PINNED, False)
                if not asynchronous:
                    self._record("blocking host→device copy", f"Tensor.{name}")
            result = source if name == "cuda" else func(source, *rest, **kwargs)
            if result is source and not source_on_device:
                result = source.clone()  # a real move makes a new tensor; the host one stays on the host
            _mark(result)
            return result
        if to_host and source_on_device:
            self._record("device→host read", f"Tensor.{name}(cpu)")
            result = func(source, *rest, **kwargs)
            if result is source:
                result = source.clone()
            return result
        result = func(source, *rest, **kwargs)
        if source_on_device:
            _mark(result)
        return result

    def _move_target(self, rest: list[Any], kwargs: dict[str, Any]) -> torch.device | None:
        """Where ``Tensor.to(...)`` sends its tensor; removes a device given by position from ``rest``."""
        if "device" in kwargs and kwargs["device"] is not None:
            return torch.device(kwargs.pop("device"))
        if rest and isinstance(rest[0], str | torch.device):
            return torch.device(rest.pop(0))
        if rest and isinstance(rest[0], torch.Tensor):
            other = rest.pop(0)
            kwargs.setdefault("dtype", other.dtype)
            return self.device if _marked(other) else torch.device("cpu")
        return None

    def _inspect(
        self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Record what an operation with a device input would synchronise on."""
        if name in _VALUE_READS and _marked(args[0]):
            self._record("device→host read", f"Tensor.{name}")
        elif name in _DATA_DEPENDENT:
            self._record("data-dependent shape", name)
        elif name in _ERROR_CHECKED:
            self._record("error check", name)
        elif name in ("__getitem__", "__setitem__", "index_select", "gather", "take"):
            self._inspect_indexing(name, args)
        elif name == "copy_" and len(args) > 1 and not _marked(args[0]):
            self._record("device→host read", "Tensor.copy_ into host memory")
        else:
            self._inspect_mixing(name, args, kwargs)

    def _inspect_indexing(self, name: str, args: tuple[Any, ...]) -> None:
        indexed, indices = args[0], tree_flatten(args[1:])[0]
        index_tensors = [i for i in indices if isinstance(i, torch.Tensor)]
        if not _marked(indexed):
            if any(_marked(i) for i in index_tensors):
                self._record("device→host read", f"host tensor indexed by a device tensor ({name})")
            return
        if any(i.dtype == torch.bool for i in index_tensors if _marked(i)):
            self._record("data-dependent shape", f"boolean mask indexing ({name})")
        if any(not _marked(i) for i in index_tensors):
            self._record("blocking host→device copy", f"device tensor indexed by a host tensor ({name})")

    def _inspect_mixing(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        if any(not _marked(t) and t.dim() > 0 for t in tensors):
            self._record(
                "device mismatch", f"{name} mixes a host tensor with elements into a device operation"
            )

    def _simulated_pinning(self, name: str, tensor: torch.Tensor) -> Any:
        if name == "is_pinned":
            return bool(getattr(tensor, _PINNED, False))
        pinned = tensor.clone()
        setattr(pinned, _PINNED, True)
        return pinned

    def _record(self, kind: str, operation: str) -> None:
        self.events.append(
            HostSync(kind, operation, self._phase, self.step, _caller(), expected=_expected_reason.get())
        )


_SKIPPED_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(__file__) + os.sep + "sync_audit")


def _caller() -> str:
    """The innermost source line outside torch and this module: where the sync comes from."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIPPED_DIRS[0]) and not filename.startswith(_SKIPPED_DIRS[1]):
            short = os.sep.join(filename.split(os.sep)[-2:])
            return f"{short}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>"
