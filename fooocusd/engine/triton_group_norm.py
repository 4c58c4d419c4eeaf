"""``group_norm(x + shift)``, with or without a SiLU after it, for channels_last activations as
three Triton kernels, compiled once per dtype and block shape rather than per image size or
channel count.

Why not torch.compile: inductor's kernels for this pass were fast only with static shapes, which
compile about fifteen graphs for every new image size (a recompilation storm across the aspect
buckets), and with dynamic shapes every element's index took runtime divisions (its pointwise
kernel ran ~6× slower than a SiLU over the same tensor) and a fresh start spent 20 s recompiling
(docs/benchmarks.md, tenth session). Here a channels_last tensor is read as rows of pixels and
columns of channels, so indices are products, never quotients, and sizes are plain arguments:
Triton compiles each kernel once and keeps it in its on-disk cache.

1. ``_channel_sums``: per-channel sums and sums of squares over a slice of the pixels, float32,
   one tile of pixels × channels at a time (the channels innermost, as they lie in memory);
   enough slices to give every streaming multiprocessor a few programs.
2. ``_group_factors``: per sample and group, the slices and channels added up, the shift folded in
   (its sums follow from the channels' sums: a resnet's time embedding, and the bias of the
   convolution before the norm, which that convolution then need not add), then one scale and one
   offset per sample and channel: ``y = silu(x * scale + offset)``.
3. ``_scale_offset``: one pass over the tensor that writes ``x``'s dtype, the SiLU optional (the
   transformers' GroupNorm has none).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine then keeps the compiled or eager pass
    triton = None
    tl = None

PIXELS_PER_TILE = 64
CHANNELS_PER_TILE = 64
PROGRAMS_PER_MULTIPROCESSOR = 4


def available(x: torch.Tensor) -> bool:
    """Whether these kernels can run on ``x``: Triton is installed and ``x`` is on a CUDA device
    (or anywhere under Triton's CPU interpreter, ``TRITON_INTERPRET=1``: the tests)."""
    return triton is not None and (x.is_cuda or interpreting())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _channel_sums(x_ptr, sums_ptr, squares_ptr, pixels, channels, pixels_per_slice, slices,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    sample = tl.program_id(0)
    channel_block = tl.program_id(1)
    piece = tl.program_id(2)
    columns = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_P)
    in_channels = columns < channels
    base = x_ptr + sample.to(tl.int64) * pixels * channels
    first = piece * pixels_per_slice
    end = tl.minimum(first + pixels_per_slice, pixels)
    total = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    total_squares = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for start in range(first, end, BLOCK_P):
        pixel = start + rows
        mask = (pixel < end)[:, None] & in_channels[None, :]
        offsets = pixel.to(tl.int64)[:, None] * channels + columns[None, :]
        values = tl.load(base + offsets, mask=mask, other=0.0).to(tl.float32)
        total += values
        total_squares += values * values
    out = (sample * slices + piece) * channels + columns
    tl.store(sums_ptr + out, tl.sum(total, axis=0), mask=in_channels)
    tl.store(squares_ptr + out, tl.sum(total_squares, axis=0), mask=in_channels)


def _group_factors(sums_ptr, squares_ptr, shift_ptr, weight_ptr, bias_ptr, scale_ptr, offset_ptr,
                   pixels, channels, slices, channels_per_group, eps, shift_stride,
                   HAS_SHIFT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr):  # fmt: skip
    sample = tl.program_id(0)
    group = tl.program_id(1)
    members = tl.arange(0, BLOCK_G)
    in_group = members < channels_per_group
    channel = group * channels_per_group + members
    piece = tl.arange(0, BLOCK_S)
    at = (sample * slices + piece)[:, None] * channels + channel[None, :]
    mask = (piece < slices)[:, None] & in_group[None, :]
    sums = tl.sum(tl.load(sums_ptr + at, mask=mask, other=0.0), axis=0)
    squares = tl.sum(tl.load(squares_ptr + at, mask=mask, other=0.0), axis=0)
    shift = tl.zeros([BLOCK_G], dtype=tl.float32)
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + sample * shift_stride + channel, mask=in_group, other=0.0).to(tl.float32)
        # (x + s): sum + n·s, and sum of squares + 2·s·sum + n·s²
        squares += shift * (2.0 * sums + pixels * shift)
        sums += pixels * shift
    count = pixels * channels_per_group
    mean = tl.sum(sums, axis=0) / count
    variance = tl.maximum(tl.sum(squares, axis=0) / count - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(variance + eps)
    weight = tl.load(weight_ptr + channel, mask=in_group, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channel, mask=in_group, other=0.0).to(tl.float32)
    scale = rstd * weight
    tl.store(scale_ptr + sample * channels + channel, scale, mask=in_group)
    tl.store(offset_ptr + sample * channels + channel, bias + (shift - mean) * scale, mask=in_group)


def _scale_offset(x_ptr, scale_ptr, offset_ptr, y_ptr, pixels, channels,
                  SILU: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pixel_block = tl.program_id(0)
    channel_block = tl.program_id(1)
    sample = tl.program_id(2)
    pixel = pixel_block * BLOCK_P + tl.arange(0, BLOCK_P)
    columns = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    in_channels = columns < channels
    mask = (pixel < pixels)[:, None] & in_channels[None, :]
    offsets = (sample.to(tl.int64) * pixels + pixel)[:, None] * channels + columns[None, :]
    values = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    factors = sample * channels + columns
    scale = tl.load(scale_ptr + factors, mask=in_channels, other=0.0)
    offset = tl.load(offset_ptr + factors, mask=in_channels, other=0.0)
    result = values * scale[None, :] + offset[None, :]
    if SILU:
        result = result / (1.0 + tl.exp(-result))
    tl.store(y_ptr + offsets, result.to(y_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any, Any]:
    """The three kernels, jitted on first use (``interpret``: Triton's CPU interpreter, for tests,
    chosen by ``TRITON_INTERPRET`` when the kernels are made)."""
    del interpret  # part of the cache key: triton.jit reads TRITON_INTERPRET itself
    return triton.jit(_channel_sums), triton.jit(_group_factors), triton.jit(_scale_offset)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def group_norm_silu(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(group_norm(x + shift))`` for a channels_last ``x`` of shape (n, c, h, w), float32
    arithmetic; the result is channels_last in ``x``'s dtype. ``shift``: (n, c, 1, 1), (1, c, 1, 1)
    (the same for every sample) or None."""
    return _normalise(x, groups, weight, bias, eps, shift, silu=True)


def group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``F.group_norm`` with weight and bias for a channels_last ``x`` of shape (n, c, h, w), float32
    arithmetic; the result is channels_last in ``x``'s dtype."""
    return _normalise(x, groups, weight, bias, eps, None, silu=False)


def _normalise(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    shift: torch.Tensor | None,
    *,
    silu: bool,
) -> torch.Tensor:
    n, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} groups")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("the Triton GroupNorm kernels take channels_last activations")
    channel_sums, group_factors, scale_offset = _kernels(interpreting())
    pixels = height * width
    channel_blocks = triton.cdiv(channels, CHANNELS_PER_TILE)
    wanted = triton.cdiv(PROGRAMS_PER_MULTIPROCESSOR * _multiprocessors(x.device), n * channel_blocks)
    slices = max(1, min(wanted, triton.cdiv(pixels, PIXELS_PER_TILE)))
    pixels_per_slice = triton.cdiv(triton.cdiv(pixels, slices), PIXELS_PER_TILE) * PIXELS_PER_TILE
    slices = triton.cdiv(pixels, pixels_per_slice)

    partial = torch.empty((2, n, slices, channels), device=x.device, dtype=torch.float32)
    channel_sums[(n, channel_blocks, slices)](
        x, partial[0], partial[1], pixels, channels, pixels_per_slice, slices,
        BLOCK_P=PIXELS_PER_TILE, BLOCK_C=CHANNELS_PER_TILE,
    )  # fmt: skip
    factors = torch.empty((2, n, channels), device=x.device, dtype=torch.float32)
    shift_values, shift_stride = (factors[0], 0) if shift is None else _per_sample_rows(shift, n, channels)
    per_group = channels // groups
    group_factors[(n, groups)](
        partial[0], partial[1], shift_values, weight, bias, factors[0], factors[1],
        pixels, channels, slices, per_group, eps, shift_stride,
        HAS_SHIFT=shift is not None, BLOCK_S=triton.next_power_of_2(slices),
        BLOCK_G=triton.next_power_of_2(per_group),
    )  # fmt: skip
    out = torch.empty_like(x, memory_format=torch.channels_last)
    scale_offset[(triton.cdiv(pixels, PIXELS_PER_TILE), channel_blocks, n)](
        x, factors[0], factors[1], out, pixels, channels,
        SILU=silu, BLOCK_P=PIXELS_PER_TILE, BLOCK_C=CHANNELS_PER_TILE,
    )  # fmt: skip
    return out


def _per_sample_rows(shift: torch.Tensor, n: int, channels: int) -> tuple[torch.Tensor, int]:
    """``shift`` (n or 1, c, 1, 1) as rows of channels, and the step between samples' rows (0: one
    row for all)."""
    rows = shift.reshape(shift.shape[0], channels).contiguous()
    if rows.shape[0] not in (1, n):
        raise ValueError(f"a shift for {rows.shape[0]} samples does not fit a batch of {n}")
    return rows, channels if rows.shape[0] == n and n > 1 else 0
