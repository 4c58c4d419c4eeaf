"""Where fp8 wins or loses: SDXL's transformer matmuls alone, bf16 against fp8, on one device.

The ``fp8`` case of ``fooocusd_bench.py`` measured the whole UNet with torchao's fp8 weights slower
than bf16 on an H100, eager (0.15×) and under regional compile (0.49×). This times the pieces for
the shapes those layers see in a 1024² image with CFG (batch 2):

* ``bf16``: ``F.linear`` in bfloat16, the baseline;
* ``scaled_mm``: ``torch._scaled_mm`` on inputs already in float8 with per-row scales: the fp8
  tensor cores' ceiling;
* ``rowwise_eager`` / ``rowwise_compiled``: scaling each input row to float8, then ``_scaled_mm``
  (what dynamic activation scaling costs, eagerly and fused by torch.compile);
* ``torchao_eager`` / ``torchao_compiled``: an ``nn.Linear`` with fooocusd's torchao fp8 weight
  (``quantization.quantize_unet_fp8``'s converter), as the UNet runs it.

Milliseconds per call from CUDA events (wall clock on a CPU), median of ``runs`` after a warm-up.
A method that fails reports its error instead of a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fooocusd.engine.attention_choice import median_milliseconds

SDXL_1024_SHAPES = (
    (2048, 1280, 1280),  # 32×32 level, batch 2: attention projections
    (2048, 1280, 10240),  # feed-forward in (GEGLU, two halves)
    (2048, 5120, 1280),  # feed-forward out
    (8192, 640, 640),  # 64×64 level: attention projections
    (8192, 640, 5120),
    (8192, 2560, 640),
)
"""(rows, in features, out features) of the UNet's transformer Linear layers at 1024², batch 2."""
TINY_SHAPES = ((64, 32, 32), (64, 32, 128))
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scaled into float8's range: (float8 values, float32 scales of shape (rows, 1))."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_matmul(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.bfloat16)


def dynamic_fp8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    xq, x_scale = rowwise_fp8(x)
    return scaled_matmul(xq, x_scale, wq, w_scale)


def measure_fp8_matmul(device: torch.device, *, tiny: bool, runs: int = 20) -> dict[str, Any]:
    """Milliseconds per call of each method for each shape, and fp8's speed-up over bf16."""
    shapes = TINY_SHAPES if tiny else SDXL_1024_SHAPES
    report: dict[str, Any] = {}
    with torch.inference_mode():
        for rows, features_in, features_out in shapes:
            x = torch.randn(rows, features_in, device=device, dtype=torch.bfloat16)
            weight = torch.randn(features_out, features_in, device=device, dtype=torch.bfloat16) * 0.02
            timings = {name: _time(device, call, runs) for name, call in _methods(x, weight).items()}
            label = f"{rows}x{features_in}x{features_out}"
            report[label] = timings
            base, best = timings.get("bf16"), timings.get("rowwise_compiled")
            if isinstance(base, float) and isinstance(best, float) and best > 0:
                timings["speedup_rowwise_compiled"] = round(base / best, 2)
    return report


def _methods(x: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], Any]]:
    from fooocusd.engine.quantization import _fp8_converter

    wq, w_scale = rowwise_fp8(weight)
    xq, x_scale = rowwise_fp8(x)
    compiled = torch.compile(dynamic_fp8_linear)
    methods: dict[str, Callable[[], Any]] = {
        "bf16": lambda: F.linear(x, weight),
        "scaled_mm": lambda: scaled_matmul(xq, x_scale, wq, w_scale),
        "rowwise_eager": lambda: dynamic_fp8_linear(x, wq, w_scale),
        "rowwise_compiled": lambda: compiled(x, wq, w_scale),
    }
    try:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=x.device, dtype=x.dtype)
        linear.weight = torch.nn.Parameter(_fp8_converter()(weight), requires_grad=False)
    except Exception as exc:  # torchao missing or refusing this device: say so in the report
        error = f"{type(exc).__name__}: {exc}"[:200]
        methods["torchao_eager"] = methods["torchao_compiled"] = lambda: _raise(error)
    else:
        compiled_linear = torch.compile(linear)
        methods["torchao_eager"] = lambda: linear(x)
        methods["torchao_compiled"] = lambda: compiled_linear(x)
    return methods


def _raise(message: str) -> None:
    raise RuntimeError(message)


def _time(device: torch.device, call: Callable[[], Any], runs: int) -> float | str:
    try:
        return round(median_milliseconds(device, call, runs), 4)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:240]
