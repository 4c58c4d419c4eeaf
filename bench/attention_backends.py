"""Which of PyTorch's attention kernels is fastest for SDXL's attention shapes, on one device.

``F.scaled_dot_product_attention`` picks its kernel by a fixed priority (FlashAttention first).
On Hopper, cuDNN's attention kernels are reported faster for some shapes and slower for others,
so this times each backend PyTorch offers at the shapes the UNet's attention sees in a 1024² image
with CFG (batch 2 and, for a batch of 4 images, 8): self-attention at the 64×64 level (4,096
tokens, 10 heads) and the 32×32 level (1,024 tokens, 20 heads), and cross-attention over the
77-token prompt; all with 64-wide heads, in bfloat16.

Milliseconds per call, median after a warm-up, for ``default`` (PyTorch's own choice) and each
backend forced with ``sdpa_kernel``; a backend that cannot run a shape reports why. ``fastest``
names the backend to weigh against ``default``. On a GPU the calls are timed as CUDA graph replays
(``attention_choice.median_milliseconds(graphed=True)``), as the engine runs them: until
2026-11-29 each call was timed alone with CUDA events, which at these sizes measured the host's
argument checks as much as the kernel (cuDNN 0.06 ms against flash's 0.19 ms at 1,024 tokens,
where the whole UNet's attention timed the same with either). Each shape is timed twice: with
q, k and v contiguous, and laid out as diffusers' fused-projection processor hands them over
(``_fused_qkv``: strided views of one projection's output). A forced backend that refuses the
second layout says so there; with PyTorch's order, such a refusal falls through to the next
kernel silently, which is what ``engine.attention = "sdpa_cudnn"`` would get.
``flash4``: FlashAttention 4's kernels (``fooocusd/engine/flash4_attention.py``), where the
``flash-attn-4`` package loads on a Hopper or Blackwell GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fooocusd.engine import flash4_attention
from fooocusd.engine.attention_choice import median_milliseconds

SDXL_1024_SHAPES = (
    # (batch, heads, query tokens, key tokens)
    (2, 10, 4096, 4096),
    (2, 20, 1024, 1024),
    (2, 10, 4096, 77),
    (2, 20, 1024, 77),
    (8, 10, 4096, 4096),
    (8, 20, 1024, 1024),
)
TINY_SHAPES = ((2, 2, 64, 64), (2, 2, 64, 77))
HEAD_WIDTH = 64
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
"""The fused kernels; the unfused ``math`` one is timed on a CPU only (on a GPU it would hold an
8×10×4096×4096 score matrix and is never the one to pick)."""


LAYOUTS = ("contiguous", "fused_qkv")


def measure_attention_backends(device: torch.device, *, tiny: bool, runs: int = 20) -> dict[str, Any]:
    """Milliseconds per call of each backend for each shape and layout, and the fastest one."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "timed_as": "CUDA graph replays" if device.type == "cuda" else "wall clock",
    }
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        for batch, heads, queries, keys in TINY_SHAPES if tiny else SDXL_1024_SHAPES:
            label = f"b{batch}_h{heads}_q{queries}_k{keys}"
            for layout in LAYOUTS:
                q, k, v = attention_inputs(batch, heads, queries, keys, layout, device, dtype, generator)
                timings: dict[str, float | str] = {
                    name: _graphed_time(device, call, runs) for name, call in _calls(q, k, v).items()
                }
                measured = {name: ms for name, ms in timings.items() if isinstance(ms, float)}
                if measured:
                    timings["fastest"] = min(measured, key=measured.__getitem__)
                report[label if layout == "contiguous" else f"{label}_{layout}"] = timings
    return report


def attention_inputs(
    batch: int,
    heads: int,
    queries: int,
    keys: int,
    layout: str,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """q, k, v of shape (batch, heads, tokens, HEAD_WIDTH): contiguous, or ``"fused_qkv"``: views
    of one projection's output (q, k and v side by side per token; k and v only for cross-attention,
    q then from a projection of its own), as diffusers' fused processor passes them to SDPA."""
    if layout == "contiguous":
        sizes = ((batch, heads, queries, HEAD_WIDTH), *[(batch, heads, keys, HEAD_WIDTH)] * 2)
        return [torch.randn(size, device=device, dtype=dtype, generator=generator) for size in sizes]
    inner = heads * HEAD_WIDTH

    def projected(tokens: int, parts: int) -> tuple[torch.Tensor, ...]:
        output = torch.randn(batch, tokens, parts * inner, device=device, dtype=dtype, generator=generator)
        return output.chunk(parts, dim=-1)

    if queries == keys:
        q, k, v = projected(queries, 3)
    else:
        (q,), (k, v) = projected(queries, 1), projected(keys, 2)
    return [t.view(batch, -1, heads, HEAD_WIDTH).transpose(1, 2) for t in (q, k, v)]


def _graphed_time(device: torch.device, call: Callable[[], Any], runs: int) -> float | str:
    try:
        return round(median_milliseconds(device, call, runs, graphed=True), 4)
    except Exception as exc:  # a backend that cannot run this shape or layout
        return f"error: {type(exc).__name__}: {exc}"[:240]


def _calls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Callable[[], Any]]:
    def forced(backend: SDPBackend) -> Callable[[], Any]:
        def call() -> Any:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return call

    calls: dict[str, Callable[[], Any]] = {"default": lambda: F.scaled_dot_product_attention(q, k, v)}
    calls.update({name: forced(backend) for name, backend in BACKENDS.items()})
    if q.device.type == "cpu":
        calls["math"] = forced(SDPBackend.MATH)
    if not flash4_attention.unavailable(q.device):
        calls["flash4"] = lambda: flash4_attention.attention(q, k, v)[0]
    return calls
