"""One SDXL transformer block compiled as the engine compiles it, and with inductor's GEMM autotuning.

Regional compile (``engine.compile = "unet"``) compiles each ``BasicTransformerBlock`` in the
default mode: cuBLAS runs the matmuls, and inductor's own kernels run what lies between them (the
LayerNorms with their residual adds, the GEGLU gate: together ~10 % of the GPU's time in the
tenth session's profile, GEGLU alone 4.1 %). With ``max-autotune-no-cudagraphs`` inductor also
times Triton matmul templates against cuBLAS and can fuse that pointwise work into their epilogues.
Whether that wins on this card, and what the autotuning costs at compile time, is measured here on
one block of each SDXL level at 1024² with CFG, for a batch of 4 images (batch 8):

* ``level_2``: 1,280 channels, 20 heads, 1,024 tokens (60 of the UNet's 70 blocks);
* ``level_1``: 640 channels, 10 heads, 4,096 tokens.

Each block is built with random weights in bfloat16, its projections fused as the engine fuses them,
and timed as CUDA graph replays of 20 calls (how the engine runs it). Per mode: the first call's
seconds (compiling and autotuning), milliseconds per call, and the largest difference from the
eager block's output. On a CPU (``--size tiny``) the blocks are tiny and run eagerly: plumbing only.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fooocusd.engine.attention_choice import median_milliseconds

SDXL_LEVELS = {
    # name: (channels, heads, tokens, batch)
    "level_2": (1280, 20, 1024, 8),
    "level_1": (640, 10, 4096, 8),
}
TINY_LEVELS = {"tiny": (64, 2, 64, 2)}
TEXT_TOKENS = 77
MODES = ("default", "max-autotune-no-cudagraphs")


def build_block(channels: int, heads: int, cross_dim: int, device: torch.device, dtype: torch.dtype) -> Any:
    """SDXL's transformer block (GEGLU feed-forward, no attention bias), random weights, fused QKV."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    torch.manual_seed(0)
    block = BasicTransformerBlock(
        channels, heads, channels // heads, cross_attention_dim=cross_dim, activation_fn="geglu"
    )
    block = block.to(device=device, dtype=dtype).eval()
    for attention in (block.attn1, block.attn2):  # as the engine fuses the UNet's (``fuse_qkv``)
        attention.fuse_projections()
        attention.set_processor(FusedAttnProcessor2_0())
    return block


def measure_block_autotune(device: torch.device, *, tiny: bool, runs: int = 20) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cross_dim = 32 if tiny else 2048
    report: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "modes": list(MODES)}
    for name, (channels, heads, tokens, batch) in (TINY_LEVELS if tiny else SDXL_LEVELS).items():
        block = build_block(channels, heads, cross_dim, device, dtype)
        generator = torch.Generator(device=device).manual_seed(1)
        hidden = torch.randn(batch, tokens, channels, device=device, dtype=dtype, generator=generator)
        text = torch.randn(batch, TEXT_TOKENS, cross_dim, device=device, dtype=dtype, generator=generator)
        with torch.inference_mode():
            reference = block(hidden, encoder_hidden_states=text)
        level: dict[str, Any] = {"channels": channels, "tokens": tokens, "batch": batch}
        for mode in MODES:
            level[mode] = _one_mode(block, hidden, text, reference, device, mode, runs)
        times = [level[mode].get("ms_per_call") for mode in MODES]
        if all(isinstance(ms, float) and ms > 0 for ms in times):
            level["autotuned_speedup"] = round(times[0] / times[1], 3)
        report[name] = level
        del block
    return report


def _one_mode(
    block: Any,
    hidden: torch.Tensor,
    text: torch.Tensor,
    reference: torch.Tensor,
    device: torch.device,
    mode: str,
    runs: int,
) -> dict[str, Any]:
    if device.type != "cuda":
        run: Any = block  # inductor's CPU code needs a C++ toolchain: the plumbing runs eagerly here
    else:
        torch._dynamo.reset()
        run = torch.compile(block, mode=mode, dynamic=False)
    try:
        with torch.inference_mode():
            started = time.perf_counter()
            output = run(hidden, encoder_hidden_states=text)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_call_s = time.perf_counter() - started
            milliseconds = median_milliseconds(
                device, lambda: run(hidden, encoder_hidden_states=text), runs, graphed=True
            )
    except Exception as exc:  # a mode that cannot compile here is a finding, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        "first_call_s": round(first_call_s, 2),
        "ms_per_call": round(milliseconds, 4),
        "max_abs_vs_eager": round((output.float() - reference.float()).abs().max().item(), 5),
    }
