"""CUDA graphs for the base UNet (``engine.cuda_graphs = "on"``): one captured graph per input shape.

Why: on the H100 the benchmark ran on, Python launching the UNet's kernels one by one took longer
than the GPU took to run them, even at 1024² (docs/benchmarks.md): a 512², 20-step image took
1.27 s under regional compile and 0.33 s as one whole-UNet CUDA graph. torch.compile's own CUDA
graphs (``compile = "unet_full"``, ``compile_mode = "reduce-overhead"``) need about 100 s of
compiling per image size, and do not work with regional compilation (its repeated blocks share one
graph, whose outputs each next block overwrites). Capturing the UNet as it already runs (eager, or
regional compile's kernels) costs two extra forward passes per size instead.

A graph replays fixed device addresses, so each bucket (the shapes and dtypes of the five inputs)
owns static input buffers: a call copies its inputs in, replays, and clones the output out. All
graphs share one memory pool: they never run at the same time, so the pool holds the largest
bucket's activations, not their sum. At most ``max_graphs`` stay captured (least recently used
goes first).

What a graph cannot see, it must not be used for:

* extras (ControlNet residuals, IP-Adapter embeddings) and other UNets (inpainting, refiner): the
  caller runs those eagerly;
* active peft LoRA layers: their scale is a Python number that a capture would freeze, so those
  renders run eagerly (folded LoRAs, ``lora_merge.py``, are plain weights changed in place: fine);
* weights or attention processors replaced since the capture (a LoRA loaded, QKV unfused): the
  fingerprint checked before each render changes and every graph is dropped.

Each capture is checked once against the eager output of the same inputs; a mismatch or an error
(out of memory, an operation that cannot be captured) leaves that bucket eager, with a note.

Every capture holds ``CAPTURE_LOCK``, and so does GPU work another thread runs beside the renders
(prompt expansions prepared ahead): a capture never overlaps it, nor another capture (PyTorch
records every graph of a process on one shared capture stream).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from loguru import logger

from fooocusd.engine.denoise import NoisePredictor, call_unet

MAX_GRAPHS = 6
"""Captured buckets kept: a daemon's common sizes × batch sizes; each costs its static buffers."""
CAPTURE_TOLERANCE = 1e-2
"""Largest |graph − eager| allowed at capture, relative to the eager output's largest magnitude."""

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(model_input, timestep, tokens, pooled, time_ids)``, as ``NoisePredictor`` takes them."""
BucketKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]

CAPTURE_LOCK = threading.RLock()
"""Held by each CUDA graph capture and by side GPU work (an expansion prepared ahead): never both."""


class GraphBackend(Protocol):
    """Records ``run`` once; returns the function that replays it and the tensor it writes to."""

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]: ...


class CudaGraphBackend:
    """``torch.cuda.CUDAGraph``: warm up on a side stream (per PyTorch's rules), then capture."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        with CAPTURE_LOCK:
            current = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                run()  # lazy initialisation (cuBLAS workspaces, compiled regions' guards) stays out
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA call (a decode, a copy) must not break this capture.
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                output = run()
            return graph.replay, output


@dataclass
class CapturedCall:
    """One bucket's graph: its static inputs, the replay function and its static output."""

    static: Inputs
    replay: Callable[[], None]
    output: torch.Tensor

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        for static, value in zip(self.static, inputs, strict=True):
            static.copy_(value)
        self.replay()
        return self.output.clone()  # the next replay overwrites the static output


def bucket_key(inputs: Inputs) -> BucketKey | None:
    """The shapes and dtypes a graph is specialised to; None when an input is not a tensor."""
    if not all(isinstance(value, torch.Tensor) for value in inputs):
        return None
    return tuple((tuple(value.shape), value.dtype) for value in inputs)


def weights_fingerprint(unet: torch.nn.Module) -> int:
    """Changes when a parameter's storage or an attention processor is replaced (graphs read both)."""
    pointers = tuple(parameter.data_ptr() for parameter in unet.parameters())
    processors = getattr(unet, "attn_processors", {})
    return hash((pointers, tuple(id(processor) for processor in processors.values())))


def active_adapter_layers(unet: torch.nn.Module) -> int:
    """peft LoRA layers that run beside their base layer (not folded, not disabled)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return 0
    return sum(
        1
        for module in unet.modules()
        if isinstance(module, BaseTunerLayer) and not module.disable_adapters and module.active_adapters
    )


class UNetGraphs:
    """The captured graphs of one resident UNet, and the buckets that stay eager."""

    def __init__(
        self,
        unet: torch.nn.Module,
        backend: GraphBackend,
        *,
        max_graphs: int = MAX_GRAPHS,
        before_capture: Callable[[], None] = lambda: None,
    ) -> None:
        """``before_capture`` runs before each capture (the engine finishes its deferred decodes
        there, ``decode_lane.py``, so that a capture has the GPU to itself)."""
        self.unet = unet
        self._backend = backend
        self._max_graphs = max_graphs
        self._graphs: OrderedDict[BucketKey, CapturedCall] = OrderedDict()
        self._eager: dict[BucketKey, str] = {}
        self._fingerprint: int | None = None
        self.captures = 0
        self.replays = 0
        self._before_capture = before_capture

    def predictor(self, unet: torch.nn.Module) -> NoisePredictor | None:
        """A predictor that replays graphs for ``unet``, or None when it must run eagerly now."""
        if unet is not self.unet or active_adapter_layers(unet):
            return None
        fingerprint = weights_fingerprint(unet)
        if fingerprint != self._fingerprint:
            if self._fingerprint is not None:
                logger.debug("UNet weights or attention processors changed: CUDA graphs dropped")
            self.clear()
            self._fingerprint = fingerprint
        return self._predict

    def clear(self) -> None:
        self._graphs.clear()
        self._eager.clear()

    def record(self) -> dict[str, Any]:
        return {
            "cuda_graphs": len(self._graphs),
            "cuda_graph_captures": self.captures,
            "cuda_graph_replays": self.replays,
            "cuda_graph_eager_buckets": list(self._eager.values()),
        }

    def _predict(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``NoisePredictor``: ``(model_input, timestep, tokens, pooled, time_ids)``."""
        key = bucket_key(inputs)  # type: ignore[arg-type]
        captured = None if key is None or key in self._eager else self._graph_for(key, inputs)
        if captured is None:
            return call_unet(self.unet, *inputs)
        self.replays += 1
        return captured(inputs)  # type: ignore[arg-type]

    def _graph_for(self, key: BucketKey, inputs: Inputs) -> CapturedCall | None:
        captured = self._graphs.get(key)
        if captured is not None:
            self._graphs.move_to_end(key)
            return captured
        while len(self._graphs) >= self._max_graphs:
            self._graphs.popitem(last=False)
        captured = self._capture(key, inputs)
        if captured is not None:
            self._graphs[key] = captured
        return captured

    def _capture(self, key: BucketKey, inputs: Inputs) -> CapturedCall | None:
        self._before_capture()
        static: Inputs = tuple(value.clone() for value in inputs)  # type: ignore[assignment]

        def run() -> torch.Tensor:
            return call_unet(self.unet, *static)

        try:
            replay, output = capture_checked(self._backend, run)
        except CaptureRefused as refusal:
            return self._stay_eager(key, str(refusal))
        self.captures += 1
        return CapturedCall(static, replay, output)

    def _stay_eager(self, key: BucketKey, reason: str) -> None:
        note = f"{_describe(key)}: {reason}"
        self._eager[key] = note
        logger.warning("CUDA graph not used for UNet inputs {}", note)
        return None


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
    """Why a replayed graph's output is not the eager output (empty when it is, within tolerance)."""
    if output.shape != reference.shape or output.dtype != reference.dtype:
        got, wanted = (f"{tuple(each.shape)} {each.dtype}" for each in (output, reference))
        return f"replay gave {got}, eager {wanted}"
    difference = (output.float() - reference.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    if not difference <= CAPTURE_TOLERANCE * max(scale, 1.0):  # also catches NaN
        return f"replay differs from eager by {difference:.3g} (outputs up to {scale:.3g})"
    return ""


def _describe(key: BucketKey) -> str:
    shape, dtype = key[0]
    return "x".join(map(str, shape)) + f" {str(dtype).removeprefix('torch.')}"
