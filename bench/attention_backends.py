"""Which of PyTorch's attention kernels is fastest for SDXL's attention shapes, on one device.

``F.scaled_dot_product_attention`` picks its kernel by a fixed priority (FlashAttention first).
On Hopper, cuDNN's attention kernels are reported faster for some shapes and slower for others,
so this times each backend PyTorch offers at the shapes the UNet's attention sees in a 1024² image
with CFG (batch 2 and, for a batch of 4 images, 8): self-attention at the 64×64 level (4,096
tokens, 10 heads) and the 32×32 level (1,024 tokens, 20 heads), and cross-attention over the
77-token prompt; all with 64-wide heads, in bfloat16.

Milliseconds per call (CUDA events on a GPU, wall clock on a CPU), median after a warm-up, for
``default`` (PyTorch's own choice) and each backend forced with ``sdpa_kernel``; a backend that
cannot run a shape reports why. ``fastest`` names the backend to weigh against ``default``.
``flash4``: FlashAttention 4's kernels (``fooocusd/engine/flash4_attention.py``), where the
``flash-attn-4`` package loads on a Hopper or Blackwell GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from fp8_matmul import _time
from torch.nn.attention import SDPBackend, sdpa_kernel

from fooocusd.engine import flash4_attention

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


def measure_attention_backends(device: torch.device, *, tiny: bool, runs: int = 20) -> dict[str, Any]:
    """Milliseconds per call of each backend for each shape, and the fastest one."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
    with torch.inference_mode():
        for batch, heads, queries, keys in TINY_SHAPES if tiny else SDXL_1024_SHAPES:
            q = torch.randn(batch, heads, queries, HEAD_WIDTH, device=device, dtype=dtype)
            k, v = (torch.randn(batch, heads, keys, HEAD_WIDTH, device=device, dtype=dtype) for _ in "kv")
            timings: dict[str, float | str] = {
                name: _time(device, call, runs) for name, call in _calls(q, k, v).items()
            }
            measured = {name: ms for name, ms in timings.items() if isinstance(ms, float)}
            if measured:
                timings["fastest"] = min(measured, key=measured.__getitem__)
            report[f"b{batch}_h{heads}_q{queries}_k{keys}"] = timings
    return report


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
