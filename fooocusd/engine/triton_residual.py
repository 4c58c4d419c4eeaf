"""A resnet block's last pass, ``(conv + bias + residual) * scale``, as one Triton kernel over
channels_last activations.

Why: cuDNN convolutions add no bias; PyTorch adds it after the convolution in a pass of its own, a
broadcast add that it runs unvectorised. A resnet block then reads and writes its output twice more
(the bias, then the residual). Here the convolution runs without its bias and one pass adds bias
and residual together (two reads, one write, float32 arithmetic, the result written over the
convolution's output): in the profile of a batch of 4 at 1024² on an H100 the broadcast adds were
about 4 % of the GPU's time (docs/benchmarks.md, twelfth session).

Like ``triton_group_norm``, the tensor is read as rows of pixels × columns of channels and every
size is an argument: compiled once per dtype and alignment, kept in Triton's on-disk cache.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from fooocusd.engine.triton_group_norm import (
    CHANNELS_PER_TILE,
    PIXELS_PER_TILE,
    interpreting,
    tl,
    triton,
)


def _add_bias_residual(x_ptr, bias_ptr, residual_ptr, rows, channels, inverse_scale,
                       SCALED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    row = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_channels = columns < channels
    mask = (row < rows)[:, None] & in_channels[None, :]
    offsets = row.to(tl.int64)[:, None] * channels + columns[None, :]
    values = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    values += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    values += tl.load(bias_ptr + columns, mask=in_channels, other=0.0).to(tl.float32)[None, :]
    if SCALED:
        values = values * inverse_scale
    tl.store(x_ptr + offsets, values.to(x_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel, jitted on first use (``interpret``: as in ``triton_group_norm._kernels``)."""
    del interpret
    return triton.jit(_add_bias_residual)


def add_bias_residual(
    hidden: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, output_scale_factor: float = 1.0
) -> torch.Tensor:
    """``(hidden + bias + residual) / output_scale_factor``, written over ``hidden`` and returned.
    ``hidden`` and ``residual``: channels_last, one shape; ``bias``: one value per channel."""
    if hidden.shape != residual.shape:
        raise ValueError(f"a residual of shape {tuple(residual.shape)} does not fit {tuple(hidden.shape)}")
    for tensor in (hidden, residual):
        if not tensor.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("add_bias_residual's Triton kernel takes channels_last activations")
    n, channels, height, width = hidden.shape
    rows = n * height * width
    grid = (triton.cdiv(rows, PIXELS_PER_TILE), triton.cdiv(channels, CHANNELS_PER_TILE))
    _kernel(interpreting())[grid](
        hidden, bias, residual, rows, channels, 1.0 / output_scale_factor,
        SCALED=output_scale_factor != 1.0, BLOCK_P=PIXELS_PER_TILE, BLOCK_C=CHANNELS_PER_TILE,
    )  # fmt: skip
    return hidden
