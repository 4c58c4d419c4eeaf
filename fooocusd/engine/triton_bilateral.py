"""Fooocus's sharpness refinement, ``α · joint_bilateral_blur(ε, guide) + (1 − α) · ε``, as one
Triton kernel on a GPU.

Why: ``guidance.joint_bilateral_blur`` gathers every pixel's 13×13 neighbourhood with ``unfold``
(169 copies of the guide and of ε, in float32) and reduces them in a dozen passes. On an H100 the
refinements cost 2 % of a 1024² image (docs/benchmarks.md, eleventh session), ~0.7 ms per step,
nearly all of it this filter on a 4-channel latent. Here each program takes a block of pixels and
walks their neighbourhoods itself: the neighbours' guide and ε come from the cache, the weights
are computed on the fly, and one store writes the blended prediction. Same maths, in float32
(summed in another order; reflected borders as ``F.pad(mode="reflect")``).

``runs_on`` checks the kernel once per device against the PyTorch path and keeps to PyTorch where
it cannot be built or disagrees, with one warning.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from loguru import logger

from fooocusd.engine.sync_audit import on_virtual_device
from fooocusd.engine.triton_group_norm import interpreting, tl, triton

PIXELS_PER_PROGRAM = 128


def _sharpen(eps_ptr, guide_ptr, out_ptr, height, width,
             eps_sn, eps_sc, eps_sh, eps_sw, guide_sn, guide_sc, guide_sh, guide_sw,
             out_sn, out_sc, out_sh, out_sw, alpha, colour_falloff, space_falloff,
             CHANNELS: tl.constexpr, GUIDES: tl.constexpr, CHANNELS_P2: tl.constexpr,
             GUIDES_P2: tl.constexpr, RADIUS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    sample = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = pixel < height * width
    row = pixel // width
    col = pixel % width
    channel = tl.arange(0, CHANNELS_P2)
    guide_channel = tl.arange(0, GUIDES_P2)
    channels_in = channel < CHANNELS
    guides_in = guide_channel < GUIDES
    eps_base = eps_ptr + sample * eps_sn + channel[None, :] * eps_sc
    guide_base = guide_ptr + sample * guide_sn + guide_channel[None, :] * guide_sc
    eps_mask = inside[:, None] & channels_in[None, :]
    guide_mask = inside[:, None] & guides_in[None, :]
    centre_guide = tl.load(
        guide_base + row[:, None] * guide_sh + col[:, None] * guide_sw, mask=guide_mask, other=0.0
    ).to(tl.float32)
    centre_eps = tl.load(eps_base + row[:, None] * eps_sh + col[:, None] * eps_sw, mask=eps_mask, other=0.0)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    weighted = tl.zeros([BLOCK, CHANNELS_P2], dtype=tl.float32)
    for dy in range(-RADIUS, RADIUS + 1):
        near_row = tl.abs(row + dy)  # reflected at both edges, the edge row itself not repeated
        near_row = tl.where(near_row > height - 1, 2 * (height - 1) - near_row, near_row)
        for dx in range(-RADIUS, RADIUS + 1):
            near_col = tl.abs(col + dx)
            near_col = tl.where(near_col > width - 1, 2 * (width - 1) - near_col, near_col)
            guide = tl.load(
                guide_base + near_row[:, None] * guide_sh + near_col[:, None] * guide_sw,
                mask=guide_mask,
                other=0.0,
            ).to(tl.float32)
            distance = tl.sum(tl.abs(guide - centre_guide), axis=1)
            weight = tl.exp(-(distance * distance) * colour_falloff - (dy * dy + dx * dx) * space_falloff)
            values = tl.load(
                eps_base + near_row[:, None] * eps_sh + near_col[:, None] * eps_sw, mask=eps_mask, other=0.0
            ).to(tl.float32)
            total += weight
            weighted += weight[:, None] * values
    blurred = weighted / total[:, None]
    result = alpha * blurred + (1.0 - alpha) * centre_eps.to(tl.float32)
    out = out_ptr + sample * out_sn + channel[None, :] * out_sc + row[:, None] * out_sh
    tl.store(out + col[:, None] * out_sw, result.to(out_ptr.dtype.element_ty), mask=eps_mask)


@functools.cache
def _kernel(interpret: bool) -> Any:
    del interpret  # part of the cache key, as in triton_group_norm._kernels
    return triton.jit(_sharpen)


def sharpen(
    eps: torch.Tensor,
    guide: torch.Tensor,
    alpha: float,
    kernel_size: int,
    sigma_color: float,
    sigma_space: float,
) -> torch.Tensor:
    """``alpha · joint_bilateral_blur(eps, guide) + (1 − alpha) · eps`` in ``eps``'s dtype and layout."""
    n, channels, height, width = eps.shape
    radius = kernel_size // 2
    if guide.shape[0] != n or guide.shape[-2:] != eps.shape[-2:]:
        raise ValueError(f"guide {tuple(guide.shape)} does not match image {tuple(eps.shape)}")
    if radius >= min(height, width):
        raise ValueError(f"a {kernel_size}-pixel window does not reflect inside {height}×{width} pixels")
    out = torch.empty_like(eps)
    grid = (triton.cdiv(height * width, PIXELS_PER_PROGRAM), n)
    _kernel(interpreting())[grid](
        eps, guide, out, height, width, *eps.stride(), *guide.stride(), *out.stride(),
        float(alpha), 0.5 / sigma_color**2, 0.5 / sigma_space**2,
        CHANNELS=channels, GUIDES=guide.shape[1], CHANNELS_P2=triton.next_power_of_2(channels),
        GUIDES_P2=triton.next_power_of_2(guide.shape[1]), RADIUS=radius, BLOCK=PIXELS_PER_PROGRAM,
    )  # fmt: skip
    return out


def runs_on(eps: torch.Tensor, kernel_size: int) -> bool:
    """Whether ``sharpen`` should take ``eps``: a CUDA tensor (not an audit's virtual one), Triton
    installed, a window that reflects inside the image, and the kernel checked on this device (the
    engine checks at load, ``check``, so that no render waits for it)."""
    if triton is None or not eps.is_cuda or on_virtual_device(eps) or kernel_size // 2 >= min(eps.shape[-2:]):
        return False
    return not kernel_fails(eps.device)


def check(device: torch.device) -> str:
    """``kernel_fails`` for ``device`` ahead of the first render where the kernel would run there
    (a CUDA GPU with Triton); "" elsewhere."""
    if triton is None or device.type != "cuda":
        return ""
    return kernel_fails(device)


@functools.cache
def kernel_fails(device: torch.device) -> str:
    """Why the kernel cannot be trusted on ``device`` (it raises, or disagrees with the PyTorch
    filter on random data), in plain words; "" when it agrees. Checked once per device."""
    from fooocusd.engine.guidance import (
        SHARPNESS_KERNEL_SIZE,
        SHARPNESS_SIGMA_COLOR,
        SHARPNESS_SIGMA_SPACE,
        joint_bilateral_blur,
    )

    generator = torch.Generator().manual_seed(0)
    eps, guide = (torch.randn(2, 4, 17, 23, generator=generator) for _ in range(2))
    window = (SHARPNESS_KERNEL_SIZE, SHARPNESS_SIGMA_COLOR, SHARPNESS_SIGMA_SPACE)
    expected = 0.5 * joint_bilateral_blur(eps, guide, *window) + 0.5 * eps
    try:
        result = sharpen(eps.to(device), guide.to(device), 0.5, *window).cpu()
    except Exception as error:  # a compiler or driver error: the PyTorch filter stays
        failure = f"{type(error).__name__}: {str(error)[:200]}"
    else:
        difference = float((result - expected).norm() / expected.norm())
        failure = "" if difference < 1e-4 else f"relative error {difference:.3g} against the PyTorch filter"
    if failure:
        logger.warning("sharpness runs on PyTorch operators: its Triton kernel failed a check ({})", failure)
    return failure
