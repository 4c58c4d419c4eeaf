"""GroupNorm computed in the channels_last layout (``engine.group_norm = "channels_last"``).

Why: PyTorch's CUDA GroupNorm works on NCHW-contiguous tensors only, so on a channels_last UNet each
GroupNorm copies its input to NCHW and the convolution after it copies the result back. In the
profile of a batch of 4 at 1024² on an H100 (docs/benchmarks.md, 2026-11-27) those copies were 22 %
of the GPU's time and GroupNorm itself another 15 %: about 2 copies per GroupNorm, 488 GroupNorms.

Here the statistics come from two reductions over the pixels with the channels innermost (the
layout channels_last already has in memory: no copy), summed per group in float32, and the
normalisation and affine transform are one multiply-add per element written straight into a
channels_last output: three passes over the tensor instead of about seven. Off by default until
the GPU check's ``group_norm`` cases have measured it; anything that is not a 4-D channels_last
tensor goes to PyTorch's own GroupNorm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def group_norm_channels_last(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.group_norm`` for a 4-D channels_last ``x``; the result is channels_last too."""
    n, c, h, w = x.shape
    per_group = c // groups
    pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view of channels_last memory
    sums = pixels.sum(dim=1, dtype=torch.float32)
    squares = torch.linalg.vector_norm(pixels, dim=1, dtype=torch.float32).square()
    count = h * w * per_group
    mean = sums.view(n, groups, per_group).sum(-1) / count
    variance = (squares.view(n, groups, per_group).sum(-1) / count - mean.square()).clamp_min(0.0)
    scale = torch.rsqrt(variance + eps).repeat_interleave(per_group, dim=1)  # (n, c)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if weight is not None:
        scale = scale * weight.float()
        shift = shift * weight.float()
    if bias is not None:
        shift = shift + bias.float()
    out = torch.empty_like(x, memory_format=torch.channels_last)
    flat_out = out.permute(0, 2, 3, 1).view(n, h * w, c)
    torch.addcmul(shift.unsqueeze(1), pixels, scale.unsqueeze(1), out=flat_out)
    return out


def _is_channels_last_image(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _forward(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    if _is_channels_last_image(x):
        return group_norm_channels_last(x, module.num_groups, module.weight, module.bias, module.eps)
    return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)


def use_channels_last_group_norm(model: Any) -> int:
    """Route every ``nn.GroupNorm`` of ``model`` through ``group_norm_channels_last`` for
    channels_last inputs; returns how many. Weights stay the same tensors (LoRA folding, graphs)."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and "forward" not in vars(module):
            module.forward = _forward.__get__(module)  # type: ignore[method-assign]
            count += 1
    return count


def use_native_group_norm(model: Any) -> int:
    """Undo ``use_channels_last_group_norm``: PyTorch's GroupNorm again; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and "forward" in vars(module):
            del module.forward
            count += 1
    return count
