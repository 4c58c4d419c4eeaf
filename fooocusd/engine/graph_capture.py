"""Recording a model call as a CUDA graph and replaying it: the parts every graphed model shares.

Used for the base UNet (``unet_graphs.py``), the text encoders (``encoder_graphs.py``) and the
expansion model's step (``expansion/static_step.py``).

A graph replays fixed device addresses, so each bucket (the shapes and dtypes it was recorded for)
owns static input buffers: a call copies its inputs in, replays, and clones the output out. Each
capture is checked once against the eager output of the same inputs; a mismatch or an error (out of
memory, an operation that cannot be captured) leaves that bucket eager, with a note.

Every capture holds ``CAPTURE_LOCK``, and so does GPU work another thread runs beside the renders
(prompt expansions prepared ahead): a capture never overlaps it, nor another capture (PyTorch
records every graph of a process on one shared capture stream).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from loguru import logger

CAPTURE_TOLERANCE = 2e-2
"""Largest ‖graph − eager‖ allowed at capture, relative to ‖eager‖. bf16 rounding stays near 1e-3
in the UNet, but CLIP-G's replays differed by 1.01–1.07 % in three H100 checks (other matrix
kernels under capture, their rounding carried through 32 layers), which kept it eager at 1 %; a
stale or unwritten row (one of 77: ~11 %) or a 5 % drift is still refused."""

BucketKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]

CAPTURE_LOCK = threading.RLock()
"""Held by each CUDA graph capture and by side GPU work (an expansion prepared ahead): never both."""


class GraphBackend(Protocol):
    """Records ``run`` once; returns the function that replays it and the tensor it writes to."""

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]: ...


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph``: warm up on a side stream (per PyTorch's rules), then capture.

    The graphs share one memory pool while at least one of them lives. Once the last is gone (a
    capture refused after its replay check, the graphs dropped for new weights), PyTorch will not
    let a new capture join that pool (an internal assertion, ``use_count > 0``, seen on an H100 on
    2026-11-27), so the next capture starts a new one. A capture that fails part-way can leave
    PyTorch's default CUDA generator believing it is still capturing, which fails every later
    random draw on the device, compiling included ("Offset increment outside graph capture"), so a
    failure is followed by ``repair_generator``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool: Any = None  # made by the first capture
        self.live_graphs = 0

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        with CAPTURE_LOCK:
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                run()  # lazy initialisation (cuBLAS workspaces, compiled regions' guards) stays out
            current.wait_stream(side)
            if self.live_graphs == 0:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: another thread's CUDA call (a decode, a copy) must not break this capture.
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    output = run()
            except BaseException:
                del graph
                self.pool = torch.cuda.graph_pool_handle()
                try:
                    repair_generator(self.device)
                except RuntimeError as still_broken:  # the capture's own error is the one to raise
                    logger.error("CUDA's random generator could not be repaired: {}", still_broken)
                raise
            self.live_graphs += 1
            weakref.finalize(graph, self._graph_released)
            return graph.replay, output

    def _graph_released(self) -> None:
        self.live_graphs -= 1


def repair_generator(device: torch.device) -> None:
    """Make the default CUDA generator usable again after a capture that failed part-way: a random
    draw outside capture then fails, and one small capture that completes ends its capture mode."""
    try:
        torch.empty(1, device=device).normal_()
        return
    except RuntimeError as exc:
        logger.warning("a failed capture left CUDA's random generator in capture mode ({}): repairing", exc)
    scratch = torch.empty(1, device=device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle()):
        scratch.normal_()
    del graph
    torch.empty(1, device=device).normal_()  # raises if still broken: the caller's capture error stands


@dataclass
class CapturedCall:
    """One bucket's graph: its static inputs, the replay function and its static output."""

    static: tuple[torch.Tensor, ...]
    replay: Callable[[], None]
    output: torch.Tensor

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for static, value in zip(self.static, inputs, strict=True):
            static.copy_(value)
        self.replay()
        return self.output.clone()  # the next replay overwrites the static output


def bucket_key(inputs: tuple[Any, ...]) -> BucketKey | None:
    """The shapes and dtypes a graph is specialised to; None when an input is not a tensor."""
    if not all(isinstance(value, torch.Tensor) for value in inputs):
        return None
    return tuple((tuple(value.shape), value.dtype) for value in inputs)


def weights_fingerprint(model: torch.nn.Module) -> int:
    """Changes when a parameter's storage or an attention processor is replaced (graphs read both)."""
    pointers = tuple(parameter.data_ptr() for parameter in model.parameters())
    processors = getattr(model, "attn_processors", {})
    return hash((pointers, tuple(id(processor) for processor in processors.values())))


def active_adapter_layers(model: torch.nn.Module) -> int:
    """peft LoRA layers that run beside their base layer (not folded, not disabled)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return 0
    return sum(
        1
        for module in model.modules()
        if isinstance(module, BaseTunerLayer) and not module.disable_adapters and module.active_adapters
    )


class CaptureRefused(Exception):
    """A capture that failed, or whose replay does not give the eager result; the message says how."""


def capture_checked(
    backend: GraphBackend, run: Callable[[], torch.Tensor]
) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``run`` and check one replay against an eager run: (replay, its output tensor).
    Raises ``CaptureRefused`` when the capture errs (out of memory, an operation that cannot be
    captured) or the replay differs."""
    try:
        reference = run().clone()
        replay, output = backend.capture(run)
        replay()
        mismatch = capture_mismatch(output, reference)
    except (RuntimeError, AssertionError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        raise CaptureRefused(f"capture failed: {type(exc).__name__}: {exc}"[:300]) from exc
    if mismatch:
        raise CaptureRefused(mismatch)
    return replay, output


def capture_mismatch(output: torch.Tensor, reference: torch.Tensor) -> str:
    """Why a replayed graph's output is not the eager output (empty when it is, within tolerance).

    Measured as ‖replay − eager‖ / ‖eager‖: a captured run may pick other matrix kernels than the
    eager one, and in bf16 that moves single elements by an ulp or two (0.0625 at 3.95 in a text
    encoder on an H100), while a graph that reads a stale or wrong buffer moves the whole norm."""
    if output.shape != reference.shape or output.dtype != reference.dtype:
        got, wanted = (f"{tuple(each.shape)} {each.dtype}" for each in (output, reference))
        return f"replay gave {got}, eager {wanted}"
    difference = torch.linalg.vector_norm(output.float() - reference.float()).item()
    scale = torch.linalg.vector_norm(reference.float()).item()
    if not difference <= CAPTURE_TOLERANCE * max(scale, 1e-6):  # also catches NaN
        return f"replay differs from eager by {difference / max(scale, 1e-6):.3g} of the output's norm"
    return ""


class GraphBuckets:
    """One model's captured graphs by bucket, at most ``max_graphs`` (least recently used goes
    first), and the buckets that stay eager with the reason."""

    def __init__(
        self,
        model_name: str,
        backend: GraphBackend,
        *,
        max_graphs: int,
        before_capture: Callable[[], None] = lambda: None,
    ) -> None:
        self.model_name = model_name
        self.backend = backend
        self.max_graphs = max_graphs
        self.before_capture = before_capture
        self._graphs: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self._eager: dict[Hashable, str] = {}
        self.captures = 0
        self.replays = 0

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def eager_notes(self) -> list[str]:
        return list(self._eager.values())

    def clear(self) -> None:
        self._graphs.clear()
        self._eager.clear()

    def replayed(
        self,
        key: Hashable,
        inputs: tuple[torch.Tensor, ...],
        run: Callable[..., torch.Tensor],
        describe: Callable[[], str],
    ) -> torch.Tensor | None:
        """``run(*inputs)`` replayed from the bucket's graph (captured now if new), or None when the
        bucket stays eager: the caller then runs it itself."""
        if key in self._eager:
            return None
        captured = self._graphs.get(key)
        if captured is not None:
            self._graphs.move_to_end(key)
        else:
            captured = self._capture(key, inputs, run, describe)
            if captured is None:
                return None
        self.replays += 1
        return captured(inputs)

    def _capture(
        self,
        key: Hashable,
        inputs: tuple[torch.Tensor, ...],
        run: Callable[..., torch.Tensor],
        describe: Callable[[], str],
    ) -> CapturedCall | None:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        self.before_capture()
        static = tuple(value.clone() for value in inputs)
        try:
            replay, output = capture_checked(self.backend, lambda: run(*static))
        except CaptureRefused as refusal:
            note = f"{describe()}: {refusal}"
            self._eager[key] = note
            logger.warning("CUDA graph not used for {} inputs {}", self.model_name, note)
            return None
        self.captures += 1
        captured = CapturedCall(static, replay, output)
        self._graphs[key] = captured
        return captured


class GraphedModel:
    """What a model's graphs report: subclasses set ``buckets`` and name their ``record`` keys."""

    record_prefix = "cuda_graph"
    buckets: GraphBuckets

    @property
    def captures(self) -> int:
        return self.buckets.captures

    @property
    def replays(self) -> int:
        return self.buckets.replays

    def record(self) -> dict[str, Any]:
        prefix = self.record_prefix
        return {
            f"{prefix}s": len(self.buckets),
            f"{prefix}_captures": self.buckets.captures,
            f"{prefix}_replays": self.buckets.replays,
            f"{prefix}_eager_buckets": self.buckets.eager_notes,
        }
