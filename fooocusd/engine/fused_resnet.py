"""Resnet blocks whose GroupNorm, time shift and SiLU run as one pass
(``engine.fuse_resnet_norms``).

Why: with activations kept channels_last (``keep_channels_last.py``) a resnet block's
``norm → SiLU`` is still four passes over the tensor in eager PyTorch (two reductions for the
statistics, a multiply-add that mixes bf16 pixels with float32 factors, which PyTorch runs
unvectorised, and the SiLU), plus one more for the time embedding added before ``norm2``. In the
profile of a batch of 4 at 1024² on an H100 (docs/benchmarks.md, 2026-11-27) that was about 190 ms
of 1,288: more than FlashAttention's self-attention. Here the statistics are one reduction pass
(per-channel sums and sums of squares, read with the channels innermost as they lie in memory), and
the shift, normalisation, affine transform and SiLU one pointwise pass that writes bf16: two reads
and one write. The arithmetic is float32, as PyTorch's GroupNorm does it.

Three ways to run that pass (``KERNELS``): "triton", our own kernels (``triton_group_norm.py``),
compiled once for every size, the engine's choice on a GPU; "compiled", the same maths under
torch.compile with one graph per channel count (``SHAPES``); "eager", the maths in PyTorch
operators, for the CPU and for a whole-UNet compile, which traces and fuses it itself. Inductor's
form was fast only with static shapes, which compile anew for every image size (docs/benchmarks.md,
tenth session).

Only the plain SDXL/SD resnet takes this path (GroupNorm norms, SiLU, the time embedding added
before ``norm2`` or none, no up/downsampling inside the block, a channels_last input); any other
block or input runs diffusers' own forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fooocusd.engine import triton_group_norm
from fooocusd.engine.keep_channels_last import is_channels_last_image

NormSiLU = Callable[..., torch.Tensor]


def group_norm_silu(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(group_norm(x + shift))`` in float32 arithmetic; the result has ``x``'s dtype and
    memory format. ``shift``: one value per sample and channel, shape (n, c, 1, 1)."""
    n, c = x.shape[0], x.shape[1]
    values = x.float()
    if shift is not None:
        values = values + shift.float()
    count = values.shape[2] * values.shape[3] * (c // groups)
    sums = values.sum(dim=(2, 3)).view(n, groups, -1)
    squares = values.square().sum(dim=(2, 3)).view(n, groups, -1)
    mean = sums.sum(-1, keepdim=True) / count
    mean_square = squares.sum(-1, keepdim=True) / count
    rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0.0) + eps)
    scale = rstd * weight.float().view(groups, -1)  # (n, groups, channels per group)
    offset = bias.float().view(groups, -1) - mean * scale
    normalised = values * scale.view(n, c, 1, 1) + offset.view(n, c, 1, 1)
    return F.silu(normalised).to(x.dtype)


SHAPES = ("per_channel_count", "dynamic", "static")
"""How the compiled pass treats shapes. "per_channel_count" (the engine's): batch, height and width
dynamic, the channel count fixed, so one graph per channel count (about ten for SDXL's UNet and VAE,
all met in the first render) whose kernels index with constant divisors. "dynamic": every size
symbolic, a few graphs in all, but each element's index takes runtime divisions: on an H100 its
pointwise kernel took 120 ms of a 1,300 ms profile and the render gained ~2 %. "static": one graph
per shape, the fastest kernels (one 1024² image −8 %, 512² −12 % on an H100) but about fifteen
compiles for every new image size and batch: a recompilation storm across the aspect buckets."""


@functools.cache
def compiled_group_norm_silu(shapes: str = "per_channel_count") -> NormSiLU:
    """``group_norm_silu`` under torch.compile (one reduction kernel and one pointwise kernel per
    call), its shapes treated as ``shapes`` says (``SHAPES``)."""
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, not {shapes!r}")
    if shapes != "per_channel_count":
        return torch.compile(group_norm_silu, dynamic=shapes == "dynamic", fullgraph=True)
    compiled = torch.compile(group_norm_silu, fullgraph=True)

    def per_channel_count(
        x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float, shift: Any = None
    ) -> torch.Tensor:
        for dim in (0, 2, 3):  # "maybe": a size-1 batch may still specialise
            torch._dynamo.maybe_mark_dynamic(x, dim)
        if shift is not None:
            torch._dynamo.maybe_mark_dynamic(shift, 0)
        return compiled(x, groups, weight, bias, eps, shift)

    return per_channel_count


KERNELS = ("triton", "compiled", "eager")


def norm_silu_for(kernel: str, shapes: str = "per_channel_count") -> NormSiLU:
    """The pass for ``kernel`` (``KERNELS``); ``shapes`` for "compiled" (``SHAPES``)."""
    if kernel == "triton":
        return triton_or_eager
    if kernel == "compiled":
        return compiled_group_norm_silu(shapes)
    if kernel == "eager":
        return group_norm_silu
    raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}")


def triton_or_eager(x: torch.Tensor, *norm: Any) -> torch.Tensor:
    """Our Triton kernels where they can run on ``x`` (a CUDA tensor), ``group_norm_silu`` elsewhere;
    ``norm``: groups, weight, bias, eps and the optional shift, as both take them."""
    if triton_group_norm.available(x):
        return triton_group_norm.group_norm_silu(x, *norm)
    return group_norm_silu(x, *norm)


def triton_kernels_fail(device: torch.device, dtype: torch.dtype) -> str:
    """Why our Triton kernels cannot be trusted on ``device`` (they raise, or disagree with
    ``group_norm_silu`` on random data), in plain words; "" when they agree. Run once per load: a
    GPU or Triton build that cannot compile them turns the fusion off instead of failing jobs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 9, 7, generator=generator) * 2 + 0.5
    shift = torch.randn(2, 64, 1, 1, generator=generator)
    weight, bias = torch.randn(64, generator=generator), torch.randn(64, generator=generator)
    x, shift, weight, bias = (t.to(device=device, dtype=dtype) for t in (x, shift, weight, bias))
    x = x.contiguous(memory_format=torch.channels_last)
    try:
        result = triton_group_norm.group_norm_silu(x, 32, weight, bias, 1e-5, shift).float()
    except Exception as error:  # a compiler or driver error: anything but a crash of the daemon
        return f"{type(error).__name__}: {str(error)[:200]}"
    expected = group_norm_silu(x.float(), 32, weight.float(), bias.float(), 1e-5, shift.float())
    error = float((result - expected).norm() / expected.norm())
    if not error < 2e-2:  # bf16 output: ~3e-3 expected; NaN fails too
        return f"relative error {error:.3g} against PyTorch's GroupNorm + SiLU"
    return ""


def takes_fused_path(block: Any) -> bool:
    """Whether ``block`` is a resnet block this module can run: diffusers' ``ResnetBlock2D`` with
    GroupNorm norms, SiLU, the time embedding added before ``norm2`` (or none), nothing resampled."""
    return (
        _adds_time_before_norm2(block)
        and isinstance(getattr(block, "norm1", None), nn.GroupNorm)
        and isinstance(getattr(block, "norm2", None), nn.GroupNorm)
        and block.norm1.affine
        and block.norm2.affine
        and isinstance(getattr(block, "nonlinearity", None), nn.SiLU)
        and getattr(block, "upsample", None) is None
        and getattr(block, "downsample", None) is None
        and hasattr(block, "conv1")
        and hasattr(block, "conv2")
    )


def _adds_time_before_norm2(block: Any) -> bool:
    """diffusers' "default" resnet, or the VAE decoder's "group" one, which has no time input."""
    norm = getattr(block, "time_embedding_norm", None)
    return norm == "default" or (norm == "group" and getattr(block, "time_emb_proj", 0) is None)


def norms_on(block: Any, device: torch.device) -> bool:
    """Whether ``block``'s norm weights are on ``device``. The fused pass reads them directly, not
    through the norm modules' calls, so weights that an offloading hook would bring in at that call
    (low-VRAM streaming, leaf by leaf) are not there: such a block runs diffusers' forward."""
    return block.norm1.weight.device == device and block.norm2.weight.device == device


def _norm_silu(norm_silu: NormSiLU, norm: nn.GroupNorm, x: torch.Tensor, shift: Any = None) -> torch.Tensor:
    return norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, shift)


def _fused_forward(
    norm_silu: NormSiLU, block: Any, input_tensor: torch.Tensor, temb: Any, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if not is_channels_last_image(input_tensor) or block.training or not norms_on(block, input_tensor.device):
        return type(block).forward(block, input_tensor, temb, *args, **kwargs)
    hidden = block.conv1(_norm_silu(norm_silu, block.norm1, input_tensor))
    shift = None
    if block.time_emb_proj is not None and temb is not None:
        if not block.skip_time_act:
            temb = block.nonlinearity(temb)
        shift = block.time_emb_proj(temb)[:, :, None, None]
    hidden = block.conv2(block.dropout(_norm_silu(norm_silu, block.norm2, hidden, shift)))
    shortcut = block.conv_shortcut(input_tensor) if block.conv_shortcut is not None else input_tensor
    output = shortcut + hidden
    if block.output_scale_factor != 1.0:  # x / 1.0 is x: skip a pass over the tensor
        output = output / block.output_scale_factor
    return output


def fuse_resnet_norms(model: Any, *, kernel: str = "eager", shapes: str = "per_channel_count") -> int:
    """Run ``model``'s eligible resnet blocks through the fused pass that ``kernel`` names
    (``norm_silu_for``); returns how many. Weights stay the same tensors (LoRA folding, CUDA graphs)."""
    norm_silu = norm_silu_for(kernel, shapes)
    forward = functools.partial(_fused_forward, norm_silu)
    fused = 0
    for module in model.modules():
        if takes_fused_path(module) and "forward" not in vars(module):
            module.forward = functools.partial(forward, module)
            fused += 1
    return fused


def unfuse_resnet_norms(model: Any) -> int:
    """diffusers' own resnet forward again; returns how many."""
    undone = 0
    for module in model.modules():
        if takes_fused_path(module) and "forward" in vars(module):
            del module.forward
            undone += 1
    return undone
