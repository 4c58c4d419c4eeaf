"""Which attention kernels the UNet runs (``engine.attention``), measured where there is a choice.

* ``"sdpa"``: PyTorch's ``scaled_dot_product_attention`` with PyTorch's own kernel order
  (FlashAttention, then the memory-efficient kernel, math, and cuDNN last);
* ``"sdpa_cudnn"``: the same call with cuDNN's attention kernels first wherever they accept the
  shape (the others after them, in PyTorch's order). The order is process-wide;
* ``"sdpa_flash4"``: the same call, with PyTorch's flash kernel replaced by FlashAttention 4's
  Hopper/Blackwell kernels (the optional ``flash4`` extra, ``flash4_attention.py``). Also
  process-wide;
* ``"xformers"``: xformers' memory-efficient attention (the optional ``xformers`` extra). diffusers'
  fused-QKV processor is PyTorch SDPA, so this also turns fused projections off;
* ``"auto"`` (the default): on a CUDA GPU, each of those that can run here is timed at the shapes
  the loaded UNet's attention layers see at its native size with CFG (for SDXL at 1024²:
  self-attention over 4,096 and 1,024 tokens, cross-attention over 77), weighted by how many layers
  have each shape, and checked against PyTorch's own result on the same inputs (cuDNN first,
  being process-wide, also on the prompt expansion's masked attention; FlashAttention 4 also through
  SDPA itself, causal and not). The fastest one
  is used if it saves at least ``MIN_SAVING`` of the attention time; otherwise, and on every other
  device, ``"sdpa"``. Measuring runs once per model load (about a hundred attention calls per
  backend; shapes already measured in this process are not measured again) and its duration is
  reported beside the choice. The SDXL engine keeps each measurement in its cache folder, so a
  later start on the same card, driver and libraries takes the choice from there
  (``attention_memory.py``; only the winner's process-wide check runs again).

Kernel speed differs by card, driver and shape (cuDNN's Hopper kernels beat FlashAttention 2 at
some of these shapes and lose at others, xformers ships its own FlashAttention 3 builds), which is
why ``auto`` measures on the card instead of trusting a table. The choice and its timings are in
the log and in ``describe()`` (``attention``, and ``acceleration`` for the measurements).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from loguru import logger

from fooocusd.engine import attention_memory, flash4_attention
from fooocusd.engine.graph_capture import repair_generator
from fooocusd.errors import ConfigError

BACKENDS = ("sdpa", "sdpa_cudnn", "sdpa_flash4", "xformers")
MIN_SAVING = 0.03
"""A backend other than PyTorch's default must save at least this share of the attention time."""
TEXT_TOKENS = 77
CFG_BATCH = 2
RUNS = 10
GRAPHED_CALLS = 20
"""Attention calls per captured graph when timing as CUDA graphs replay them."""
MEASURING_METHOD = 1
"""Part of the key under which timings are kept between starts: raise it when ``measure_backends``
or what it times changes, so that timings taken the old way are not reused."""
ATOL, RTOL = 1e-2, 2e-2
"""Agreement with PyTorch's default result, at half-precision rounding of softmax averages."""

_measured: dict[tuple[Any, ...], AttentionChoice] = {}


@dataclass(frozen=True)
class AttentionShape:
    """One attention call: (batch, heads, query tokens, key tokens, head width)."""

    batch: int
    heads: int
    queries: int
    keys: int
    head_dim: int

    @property
    def label(self) -> str:
        return f"b{self.batch}_h{self.heads}_q{self.queries}_k{self.keys}_d{self.head_dim}"


@dataclass
class AttentionChoice:
    """The backend in use and, under ``auto``, what it was chosen from."""

    backend: str
    reason: str
    per_unet_call_ms: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    measuring_s: float = 0.0
    """How long the measurement took (part of the model load)."""

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"attention": self.backend, "attention_reason": self.reason}
        if self.per_unet_call_ms:
            record["attention_ms_per_unet_call"] = self.per_unet_call_ms
            record["attention_measuring_s"] = round(self.measuring_s, 3)
        if self.rejected:
            record["attention_rejected"] = self.rejected
        return record


# -- the UNet's attention shapes -------------------------------------------------------------------


def unet_attention_shapes(
    unet: Any, *, batch: int = CFG_BATCH, text_tokens: int = TEXT_TOKENS
) -> Counter[AttentionShape]:
    """How many attention layers of ``unet`` run each shape at its native size (``config.sample_size``).

    Down block ``i`` works at the latent size halved ``i`` times, the mid block at the smallest
    size, up block ``j`` at the size of down block ``n − 1 − j``.
    """
    sample = unet.config.sample_size
    height, width = (sample, sample) if isinstance(sample, int) else tuple(sample)
    last = len(unet.down_blocks) - 1
    levels = [(index, block) for index, block in enumerate(unet.down_blocks)]
    levels.append((last, unet.mid_block))
    levels += [(last - index, block) for index, block in enumerate(unet.up_blocks)]
    shapes: Counter[AttentionShape] = Counter()
    for level, block in levels:
        tokens = _halved(height, level) * _halved(width, level)
        for layer in _attention_layers(block):
            keys = text_tokens if layer.is_cross_attention else tokens
            shapes[AttentionShape(batch, layer.heads, tokens, keys, layer.inner_dim // layer.heads)] += 1
    return shapes


def _halved(size: int, times: int) -> int:
    for _ in range(times):
        size = -(-size // 2)  # a stride-2 convolution with padding 1 rounds up
    return size


def _attention_layers(block: Any) -> Iterable[Any]:
    for transformer in getattr(block, "attentions", None) or []:
        for layer_block in getattr(transformer, "transformer_blocks", []):
            for name in ("attn1", "attn2"):
                layer = getattr(layer_block, name, None)
                if layer is not None and hasattr(layer, "heads"):
                    yield layer


# -- backends ----------------------------------------------------------------------------------------


def cudnn_attention_supported(device: torch.device) -> str:
    """Why ``sdpa_cudnn`` cannot run on ``device``; empty when it can."""
    if device.type != "cuda":
        return "cuDNN attention runs on NVIDIA GPUs only"
    if not hasattr(torch._C, "_set_sdp_priority_order"):
        return f"torch {torch.__version__} cannot reorder its attention kernels (needs 2.6 or newer)"
    return ""


def xformers_supported(device: torch.device) -> str:
    """Why ``xformers`` cannot run on ``device``; empty when it can."""
    if device.type != "cuda":
        return "xformers runs on NVIDIA GPUs only"
    try:
        import xformers.ops  # noqa: F401
    except ImportError as exc:
        return f"xformers is not installed ({exc})"
    return ""


def prefer_cudnn_attention(prefer: bool) -> None:
    """Put cuDNN's attention kernels first in PyTorch's (process-wide) order, or restore the default."""
    if not hasattr(torch._C, "_set_sdp_priority_order"):
        return
    torch._C._set_sdp_priority_order(_cudnn_first_order() if prefer else _DEFAULT_ORDER)


def _cudnn_first_order() -> list[int]:
    from torch.nn.attention import SDPBackend

    cudnn = int(SDPBackend.CUDNN_ATTENTION)
    return [cudnn] + [backend for backend in _DEFAULT_ORDER if backend != cudnn]


_DEFAULT_ORDER: list[int] = (
    list(torch._C._get_sdp_priority_order()) if hasattr(torch._C, "_get_sdp_priority_order") else []
)


def enable_attention(pipeline: Any, backend: str, device: torch.device) -> None:
    """Switch ``pipeline`` (and the process's SDPA kernel order) to ``backend`` for ``device``.

    A ConfigError says why when ``backend`` cannot run there.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}", where="engine.attention")
    if backend == "sdpa_cudnn" and (reason := cudnn_attention_supported(device)):
        raise ConfigError(
            f"engine.attention = 'sdpa_cudnn' but {reason}",
            where="engine.attention",
            hint="set engine.attention = 'auto', which uses cuDNN's kernels only where they measure faster",
        )
    if backend == "sdpa_flash4" and (reason := flash4_attention.unavailable(device)):
        raise ConfigError(
            f"engine.attention = 'sdpa_flash4' but {reason}",
            where="engine.attention",
            hint=f"install fooocusd[flash4] ({flash4_attention.PACKAGE}) on a Hopper or Blackwell GPU, "
            "or set engine.attention = 'auto'",
        )
    prefer_cudnn_attention(backend == "sdpa_cudnn")
    if backend == "sdpa_flash4":
        flash4_attention.activate()
    else:
        flash4_attention.deactivate()
    if backend != "xformers":
        return
    try:
        pipeline.enable_xformers_memory_efficient_attention()
    except (ImportError, ModuleNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"engine.attention = 'xformers' but xformers cannot be used: {exc}",
            where="engine.attention",
            hint="install fooocusd[xformers] or set engine.attention = 'auto'",
        ) from exc


def sdpa_order(order: list[int]) -> contextlib.AbstractContextManager[Any]:
    """PyTorch's SDPA kernels tried in ``order`` (``SDPBackend`` values) inside the block."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend(value) for value in order], set_priority=True)


def attention_runner(backend: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Attention of (batch, heads, tokens, width) tensors the way ``backend`` computes it."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention
    if backend == "sdpa_cudnn":

        def cudnn_first(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_order(_cudnn_first_order()):
                return F.scaled_dot_product_attention(q, k, v)

        return cudnn_first
    if backend == "sdpa_flash4":

        def flash4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return flash4_attention.attention(q, k, v)[0]

        return flash4
    if backend == "xformers":
        import xformers.ops

        def memory_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            heads_last = [t.transpose(1, 2) for t in (q, k, v)]
            return xformers.ops.memory_efficient_attention(*heads_last).transpose(1, 2)

        return memory_efficient
    raise ValueError(f"unknown attention backend {backend!r}")


# -- measuring -------------------------------------------------------------------------------------------


def median_milliseconds(
    device: torch.device, call: Callable[[], Any], runs: int, *, graphed: bool = False
) -> float:
    """Median time of ``call`` after two warm-up calls: CUDA events on a GPU, the wall clock elsewhere.
    ``graphed``: as a captured CUDA graph replays it (``graphed_milliseconds``), where that works."""
    if graphed and device.type == "cuda":
        try:
            return graphed_milliseconds(device, call, runs)
        except RuntimeError as exc:  # a kernel that cannot be captured: time it as it runs eagerly
            logger.debug("attention timed eagerly, its capture failed: {}", exc)
            repair_generator(device)
    call()
    call()
    samples = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            mark = time.perf_counter()
            call()
            samples.append((time.perf_counter() - mark) * 1000)
    return statistics.median(samples)


def graphed_milliseconds(device: torch.device, call: Callable[[], Any], runs: int) -> float:
    """Milliseconds per ``call`` when ``GRAPHED_CALLS`` of them replay from one CUDA graph: the
    kernels' own time, without the host work between them (argument checks, cuDNN's plan lookup,
    the kernel-order switch of ``attention_runner``), which CUDA graphs take out of a render. Timed
    eagerly, cuDNN first measured 2.3x slower than PyTorch's order on an H100 (21.8 against 9.3 ms
    per UNet call) yet rendered 5 % faster under graphs (docs/benchmarks.md, tenth session)."""
    stream = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up outside the capture: kernel plans, workspaces
        call()
        call()
    stream.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPHED_CALLS):
            call()
    try:
        return median_milliseconds(device, graph.replay, runs) / GRAPHED_CALLS
    finally:
        del graph


def measure_backends(
    backends: Sequence[str],
    shapes: Counter[AttentionShape],
    device: torch.device,
    dtype: torch.dtype,
    *,
    runs: int = RUNS,
    graphed: bool = False,
) -> tuple[dict[str, float], dict[str, str]]:
    """Milliseconds of attention per UNet call for each backend, and the backends rejected with why.

    The first backend is the reference: the others must agree with its result on every shape.
    ``graphed``: timed as CUDA graph replays (``graphed_milliseconds``), as the engine will run them.
    """
    totals = dict.fromkeys(backends, 0.0)
    rejected: dict[str, str] = {}
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        for shape, layers in shapes.items():
            q, k, v = _inputs(shape, device, dtype, generator)
            reference: torch.Tensor | None = None
            for backend in [name for name in backends if name not in rejected]:
                try:
                    result, milliseconds = _time_backend(backend, q, k, v, device, runs, graphed)
                except Exception as exc:  # a kernel that cannot run a shape is not a choice
                    rejected[backend] = f"{type(exc).__name__} at {shape.label}: {exc}"[:300]
                    continue
                if reference is None:
                    reference = result
                elif gap := _disagreement(result, reference):
                    rejected[backend] = f"differs from PyTorch's default by up to {gap} at {shape.label}"
                    continue
                totals[backend] += layers * milliseconds
    return {name: round(ms, 4) for name, ms in totals.items() if name not in rejected}, rejected


def _time_backend(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    device: torch.device,
    runs: int,
    graphed: bool,
) -> tuple[torch.Tensor, float]:
    run = attention_runner(backend)
    return run(q, k, v), median_milliseconds(device, lambda: run(q, k, v), runs, graphed=graphed)


def _disagreement(result: torch.Tensor, reference: torch.Tensor) -> str:
    """Empty when ``result`` matches ``reference`` within half-precision rounding, else the largest gap."""
    if torch.allclose(result.float(), reference.float(), atol=ATOL, rtol=RTOL):
        return ""
    return f"{(result.float() - reference.float()).abs().max().item():.3g}"


def _inputs(
    shape: AttentionShape, device: torch.device, dtype: torch.dtype, generator: torch.Generator
) -> list[torch.Tensor]:
    """q, k, v laid out as diffusers' fused-projection processor hands them to SDPA: heads are a
    strided view of the projections' output, so a kernel's stride handling is tested too."""
    inner = shape.heads * shape.head_dim

    def projected(tokens: int, parts: int) -> tuple[torch.Tensor, ...]:
        size = (shape.batch, tokens, parts * inner)
        return torch.randn(size, device=device, dtype=dtype, generator=generator).chunk(parts, dim=-1)

    if shape.queries == shape.keys:
        q, k, v = projected(shape.queries, 3)
    else:
        (q,), (k, v) = projected(shape.queries, 1), projected(shape.keys, 2)
    return [t.view(shape.batch, -1, shape.heads, shape.head_dim).transpose(1, 2) for t in (q, k, v)]


MASKED = "masked attention (the prompt expansion's)"


def masked_attention_problem(device: torch.device, dtype: torch.dtype) -> str:
    """Why cuDNN first cannot be the process's order; empty when it can.

    The order reaches every SDPA call in the process, not only the UNet's: the prompt expansion
    attends one new token over its cache through a visibility mask. That call must give PyTorch's
    default result with cuDNN first too (or fall through to another kernel)."""
    generator = torch.Generator(device=device).manual_seed(1)
    query = torch.randn(1, 12, 1, 64, device=device, dtype=dtype, generator=generator)
    keys, values = (torch.randn(1, 12, 96, 64, device=device, dtype=dtype, generator=generator) for _ in "kv")
    visible = (torch.arange(96, device=device) < 40)[None, None, None, :]
    with torch.inference_mode():
        reference = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
    try:
        with torch.inference_mode(), sdpa_order(_cudnn_first_order()):
            result = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
    except Exception as exc:  # a kernel that claims the call and then fails it
        return f"{MASKED} fails with cuDNN first: {type(exc).__name__}: {exc}"[:300]
    if gap := _disagreement(result, reference):
        return f"{MASKED} differs with cuDNN first by up to {gap}"
    return ""


def pick_fastest(per_call_ms: dict[str, float], *, default: str = "sdpa") -> tuple[str, str]:
    """(backend, reason): the fastest if it saves at least ``MIN_SAVING`` against ``default``."""
    if default not in per_call_ms:
        return default, "PyTorch's own kernel choice could not be timed"
    fastest = min(per_call_ms, key=per_call_ms.__getitem__)
    baseline = per_call_ms[default]
    saving = 1.0 - per_call_ms[fastest] / baseline if baseline > 0 else 0.0
    if fastest == default or saving < MIN_SAVING:
        return default, f"PyTorch's own kernel choice: nothing saves {MIN_SAVING:.0%} of its attention time"
    return fastest, f"measured {saving:.0%} faster than PyTorch's own kernel choice at this model's shapes"


def candidates_on(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """The backends ``auto`` times on ``device`` (``sdpa`` first), and the others with why not."""
    candidates, skipped = ["sdpa"], {}
    for backend, why_not in (
        ("sdpa_cudnn", cudnn_attention_supported(device)),
        ("sdpa_flash4", flash4_attention.unavailable(device)),
        ("xformers", xformers_supported(device)),
    ):
        if why_not:
            skipped[backend] = why_not
        else:
            candidates.append(backend)
    return candidates, skipped


def describe_setting(setting: str, device: torch.device) -> str:
    """What ``engine.attention = setting`` means on ``device``, before any model is loaded."""
    if setting != "auto":
        return f"attention {setting}"
    if device.type != "cuda":
        return "attention sdpa (auto; timed on NVIDIA GPUs only)"
    candidates = ", ".join(candidates_on(device)[0])
    return f"attention auto (the fastest of {candidates}, timed once per card, driver and libraries)"


def choose_attention(
    setting: str,
    unet: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    graphed: bool = False,
    memory: Path | None = None,
) -> AttentionChoice:
    """The backend for ``engine.attention = setting`` with ``unet`` on ``device``; auto measures on
    CUDA, as CUDA graphs replay the kernels where ``graphed`` (the engine will replay the UNet).
    ``memory``: the file where measurements are kept between starts (``attention_memory.py``)."""
    if setting != "auto":
        return AttentionChoice(setting, "engine.attention")
    if device.type != "cuda":
        return AttentionChoice("sdpa", "auto: PyTorch's own kernel choice (measured on CUDA GPUs only)")
    prefer_cudnn_attention(False)  # "sdpa" is timed with PyTorch's own kernels, whatever ran before
    flash4_attention.deactivate()
    try:
        shapes = unet_attention_shapes(unet)
    except (AttributeError, TypeError, ValueError) as exc:  # a UNet class laid out otherwise
        return AttentionChoice("sdpa", f"auto: PyTorch's own kernel choice (shapes unknown: {exc})")
    key = (str(device), dtype, graphed, tuple(sorted(shapes.items(), key=lambda item: item[0].label)))
    if key in _measured:
        return _measured[key]
    started = time.perf_counter()
    candidates, skipped = candidates_on(device)
    widths = {shape.head_dim for shape in shapes} | {flash4_attention.TEXT_ENCODER_HEAD_WIDTH}
    facts = _memory_facts(device, dtype, graphed, shapes, candidates) if memory is not None else None
    stored = attention_memory.recall(memory, facts) if memory is not None and facts is not None else None
    if stored is not None:
        per_call_ms, rejected = dict(stored["per_unet_call_ms"]), {}
        backend, reason = _pick_passing(per_call_ms, rejected, device, dtype, widths)
        reason += f" (timed at an earlier start, {stored.get('measured_at', '')}, kept in {memory})"
    else:
        per_call_ms, rejected = measure_backends(candidates, shapes, device, dtype, graphed=graphed)
        for name in list(per_call_ms):
            if problem := process_wide_problem(name, device, dtype, widths):
                del per_call_ms[name]
                rejected[name] = problem
        backend, reason = pick_fastest(per_call_ms)
        # Only a clean measurement is kept: a candidate that failed (out of memory, a kernel that
        # would not compile, a disagreement) is measured again at the next start, not ruled out.
        if memory is not None and facts is not None and set(per_call_ms) == set(candidates):
            attention_memory.remember(memory, facts, per_call_ms, time.perf_counter() - started)
    if graphed:
        reason += " (timed as CUDA graph replays)"
    elapsed = time.perf_counter() - started
    choice = AttentionChoice(backend, f"auto: {reason}", per_call_ms, {**skipped, **rejected}, elapsed)
    logger.info("attention: {} ({}; ms per UNet call {}; {:.2f} s)", backend, reason, per_call_ms, elapsed)
    if hint := flash4_attention.install_hint(device):
        logger.info("attention: {}", hint)
    _measured[key] = choice
    return choice


def process_wide_problem(backend: str, device: torch.device, dtype: torch.dtype, widths: set[int]) -> str:
    """Why ``backend``, which changes every SDPA call in the process, cannot be chosen; empty when
    it can (or changes only the UNet's calls). cuDNN first must also run the prompt expansion's
    masked attention; FlashAttention 4 must give PyTorch's result through SDPA at ``widths``."""
    if backend == "sdpa_cudnn":
        return masked_attention_problem(device, dtype)
    if backend == "sdpa_flash4":
        return flash4_attention.dispatch_problem(device, dtype, widths)
    return ""


def _pick_passing(
    per_call_ms: dict[str, float],
    rejected: dict[str, str],
    device: torch.device,
    dtype: torch.dtype,
    widths: set[int],
) -> tuple[str, str]:
    """``pick_fastest`` over remembered timings, checking only the winner's process-wide effects
    (the losers are never switched on, so checking them would only cost time at start)."""
    while True:
        backend, reason = pick_fastest(per_call_ms)
        if not (problem := process_wide_problem(backend, device, dtype, widths)):
            return backend, reason
        del per_call_ms[backend]
        rejected[backend] = problem


def _memory_facts(
    device: torch.device,
    dtype: torch.dtype,
    graphed: bool,
    shapes: Counter[AttentionShape],
    candidates: list[str],
) -> dict[str, Any] | None:
    environment = attention_memory.environment(device)
    if environment is None:
        return None
    layers = {shape.label: count for shape, count in sorted(shapes.items(), key=lambda item: item[0].label)}
    return {
        **environment,
        "method": MEASURING_METHOD,
        "dtype": str(dtype).removeprefix("torch."),
        "graphed": graphed,
        "candidates": candidates,
        "shapes": layers,
    }
