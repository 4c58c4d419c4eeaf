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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fooocusd.engine import triton_group_norm, triton_residual
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
    """Why our Triton kernels cannot be trusted on ``device`` (they raise, or disagree with PyTorch
    on random data), in plain words; "" when they agree. Run once per load: a GPU or Triton build
    that cannot compile them turns the fusion off instead of failing jobs."""
    generator = torch.Generator().manual_seed(0)
    sizes = ((2, 64, 9, 7), (2, 64, 9, 7), (2, 64, 1, 1), (64,), (64,))
    tensors = [torch.randn(size, generator=generator).to(dtype) for size in sizes]
    tensors[0] = (tensors[0].float() * 2 + 0.5).to(dtype)  # statistics away from 0 and 1
    x, residual, shift, weight, bias = (t.float() for t in tensors)  # what the kernels are given
    on_device = [t.to(device) for t in tensors]
    for at in (0, 1):
        on_device[at] = on_device[at].contiguous(memory_format=torch.channels_last)
    x_, residual_, shift_, weight_, bias_ = on_device
    checks = (
        (
            "GroupNorm + SiLU",
            lambda: triton_group_norm.group_norm_silu(x_, 32, weight_, bias_, 1e-5, shift_),
            group_norm_silu(x, 32, weight, bias, 1e-5, shift),
        ),
        (
            "GroupNorm",
            lambda: triton_group_norm.group_norm(x_, 32, weight_, bias_, 1e-5),
            F.group_norm(x, 32, weight, bias, 1e-5),
        ),
        (
            "bias + residual",
            lambda: triton_residual.add_bias_residual(x_.clone(), bias_, residual_, 2.0),
            add_bias_residual(x, bias, residual, 2.0),
        ),
    )
    for what, run, expected in checks:
        try:
            result = run().float().cpu()
        except Exception as error:  # a compiler or driver error: anything but a crash of the daemon
            return f"{type(error).__name__}: {str(error)[:200]}"
        error = float((result - expected).norm() / expected.norm())
        if not error < 2e-2:  # bf16 output: ~3e-3 expected; NaN fails too
            return f"relative error {error:.3g} against PyTorch's {what}"
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


def plain_conv(module: Any) -> nn.Conv2d | None:
    """The plain ``nn.Conv2d`` that ``module``'s call amounts to: ``module`` itself, or the base layer
    of a peft LoRA layer that runs only its base (LoRAs folded into the weights with the adapters
    off, or merged). None for anything else: an active LoRA, a hook, another wrapper."""
    if "forward" in vars(module) or module._forward_hooks or module._forward_pre_hooks:
        return None  # an offloading or other hook: the call must go through it
    if type(module) is nn.Conv2d:
        return module
    base = getattr(module, "base_layer", None)
    # peft's forward is ``base_layer(x)`` exactly when one of the two holds (both: it unmerges)
    only_base = bool(getattr(module, "disable_adapters", False)) != bool(getattr(module, "merged", False))
    return plain_conv(base) if isinstance(base, nn.Module) and only_base else None


@dataclass(frozen=True)
class BiasFreeConvs:
    """A resnet block's convolutions, to be run without their biases, which the passes around them
    add instead: ``conv1``'s in ``norm2``'s shift, ``conv2``'s and the shortcut's in the residual add."""

    conv1: nn.Conv2d
    conv2: nn.Conv2d
    shortcut: nn.Conv2d | None

    @property
    def output_bias(self) -> torch.Tensor:
        if self.shortcut is None:
            return self.conv2.bias
        return self.conv2.bias + self.shortcut.bias


def bias_free_convs(block: Any, device: torch.device) -> BiasFreeConvs | None:
    """``block``'s convolutions when all are plain, have biases and sit on ``device``; else None
    (the block then calls them as modules, biases and all)."""
    convs = [plain_conv(block.conv1), plain_conv(block.conv2)]
    if block.conv_shortcut is not None:
        convs.append(plain_conv(block.conv_shortcut))
    for conv in convs:
        if conv is None or conv.bias is None or conv.weight.device != device:
            return None
    return BiasFreeConvs(convs[0], convs[1], convs[2] if len(convs) == 3 else None)


def add_bias_residual(
    hidden: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, output_scale_factor: float
) -> torch.Tensor:
    """``(hidden + bias + residual) / output_scale_factor`` in PyTorch operators."""
    output = residual + (hidden + bias.view(1, -1, 1, 1))
    if output_scale_factor != 1.0:  # x / 1.0 is x: skip a pass over the tensor
        output = output / output_scale_factor
    return output


def triton_or_eager_residual(
    hidden: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, output_scale_factor: float
) -> torch.Tensor:
    """``add_bias_residual`` as one Triton pass where it can run (channels_last CUDA tensors of one
    shape), in PyTorch operators elsewhere."""
    if (
        triton_group_norm.available(hidden)
        and hidden.shape == residual.shape
        and is_channels_last_image(hidden)
        and is_channels_last_image(residual)
    ):
        return triton_residual.add_bias_residual(hidden, bias, residual, output_scale_factor)
    return add_bias_residual(hidden, bias, residual, output_scale_factor)


@dataclass(frozen=True)
class FusedPasses:
    """The passes a fused resnet block runs around its convolutions; ``fold_biases``: whether they
    add the convolutions' biases (``bias_free_convs``), or the convolutions do."""

    norm_silu: NormSiLU
    add_bias_residual: Callable[..., torch.Tensor]
    fold_biases: bool = True


def passes_for(kernel: str, shapes: str = "per_channel_count", *, fold_biases: bool = True) -> FusedPasses:
    """The passes for ``kernel`` (``KERNELS``): the residual add is one Triton pass with "triton",
    PyTorch operators otherwise (which a whole-UNet compile fuses itself)."""
    residual = triton_or_eager_residual if kernel == "triton" else add_bias_residual
    return FusedPasses(norm_silu_for(kernel, shapes), residual, fold_biases)


def _norm_silu(norm_silu: NormSiLU, norm: nn.GroupNorm, x: torch.Tensor, shift: Any = None) -> torch.Tensor:
    return norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, shift)


def _time_shift(block: Any, temb: Any) -> torch.Tensor | None:
    if block.time_emb_proj is None or temb is None:
        return None
    if not block.skip_time_act:
        temb = block.nonlinearity(temb)
    return block.time_emb_proj(temb)[:, :, None, None]


def _fused_forward(
    passes: FusedPasses, block: Any, input_tensor: torch.Tensor, temb: Any, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if not is_channels_last_image(input_tensor) or block.training or not norms_on(block, input_tensor.device):
        return type(block).forward(block, input_tensor, temb, *args, **kwargs)
    shift = _time_shift(block, temb)
    convs = bias_free_convs(block, input_tensor.device) if passes.fold_biases else None
    if convs is None:
        hidden = block.conv1(_norm_silu(passes.norm_silu, block.norm1, input_tensor))
        hidden = block.conv2(block.dropout(_norm_silu(passes.norm_silu, block.norm2, hidden, shift)))
        shortcut = block.conv_shortcut(input_tensor) if block.conv_shortcut is not None else input_tensor
        output = shortcut + hidden
        if block.output_scale_factor != 1.0:
            output = output / block.output_scale_factor
        return output
    normalised = _norm_silu(passes.norm_silu, block.norm1, input_tensor)
    hidden = convs.conv1._conv_forward(normalised, convs.conv1.weight, None)
    conv1_bias = convs.conv1.bias.view(1, -1, 1, 1)
    shift = conv1_bias if shift is None else shift + conv1_bias
    normalised = block.dropout(_norm_silu(passes.norm_silu, block.norm2, hidden, shift))
    hidden = convs.conv2._conv_forward(normalised, convs.conv2.weight, None)
    shortcut = input_tensor
    if convs.shortcut is not None:
        shortcut = convs.shortcut._conv_forward(input_tensor, convs.shortcut.weight, None)
    return passes.add_bias_residual(hidden, convs.output_bias, shortcut, block.output_scale_factor)


def fuse_resnet_norms(
    model: Any, *, kernel: str = "eager", shapes: str = "per_channel_count", fold_biases: bool = True
) -> int:
    """Run ``model``'s eligible resnet blocks through the fused passes that ``kernel`` names
    (``passes_for``); returns how many. Weights stay the same tensors (LoRA folding, CUDA graphs).
    ``fold_biases``: the convolutions' biases added by those passes (off: an experiment of the GPU
    check, which measures what folding them saves)."""
    forward = functools.partial(_fused_forward, passes_for(kernel, shapes, fold_biases=fold_biases))
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
