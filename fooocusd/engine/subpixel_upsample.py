"""Nearest-neighbour 2× upsampling followed by a 3×3 convolution, without the upsampled tensor
(``engine.subpixel_upsample``).

Why: diffusers' ``Upsample2D`` doubles the image by repeating each pixel into a 2×2 square, then
runs a 3×3 convolution over the result. Every output pixel then reads a 3×3 window in which only
2×2 distinct input pixels appear, so 5 of the 9 taps multiply a pixel already counted. Here each of
the four output phases (row parity a, column parity b) is a 2×2 convolution over the input, whose
taps are sums of the original ones: along rows, phase 0 reads input rows (i-1, i) with taps
(w0, w1 + w2) and phase 1 rows (i, i+1) with (w0 + w1, w2); columns alike. All four phases are one
convolution with 4× the output channels (padding 1, so each phase finds its window at its own
offset), whose results are interleaved into the output with the bias added in the same pass.
4/9 of the multiply-adds, and neither the upsampled tensor (4× the input) nor the bias's own pass
over the output is written. SDXL's UNet has two such layers per call and its VAE decoder three, the
largest at the full image size (a third of the decoder's multiply-adds).

The phase kernels are made from the weight at every call (one batched matmul and a copy), so they
follow weights changed in place (LoRAs folded into the UNet) and CUDA graphs replay them fresh.

The same sums make a 4×4 kernel for a stride-2 transposed convolution (``FORMS``: "transposed"),
which writes the interleaved output itself: the same multiply-adds in fewer kernels, if cuDNN's
strided transposed convolutions run as fast as its plain ones (an experiment of the GPU check).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fooocusd.engine.fused_resnet import plain_conv

MIXING = "_subpixel_tap_mixing"
"""The non-persistent buffer, on each routed module, that maps 3×3 taps to the phases' 2×2 taps."""

ROW_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))
"""For row phase a, which of the 3 kernel rows add up into each of its 2 taps (columns alike)."""

TRANSPOSED_ROW_TAPS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))
"""For each of the 4 rows of the transposed kernel (stride 2, padding 1), which of the 3 kernel rows
add up into it: rows 1 and 3 feed even output rows, 0 and 2 odd ones (the phases' taps, reordered)."""

FORMS = ("phases", "transposed")


def tap_mixing(
    device: torch.device | None = None, dtype: torch.dtype = torch.float32, form: str = "phases"
) -> torch.Tensor:
    """(16, 9): which of the 3×3 taps add up into each tap of ``form``'s kernels. "phases": rows
    ``(2a + b) · 4 + 2u + v``, phase (a, b)'s 2×2 taps; "transposed": the 4×4 kernel's taps, row-major."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if form == "phases":
        rows = torch.tensor(ROW_TAPS, dtype=torch.float64)  # (phase, tap, kernel row)
        mixing = torch.einsum("aur,bvc->abuvrc", rows, rows)
    else:
        rows = torch.tensor(TRANSPOSED_ROW_TAPS, dtype=torch.float64)  # (tap, kernel row)
        mixing = torch.einsum("ur,vc->uvrc", rows, rows)
    return mixing.reshape(16, 9).to(device=device, dtype=dtype)


def mixed_taps(weight: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """(out, 16, in): for each output channel, ``mixing``'s 16 taps made from the 3×3 ``weight``
    (out, in, 3, 3); one batched matmul that reads a channels_last weight where it lies."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.permute(0, 2, 3, 1).reshape(out_channels, 9, in_channels)  # a view when channels_last
    return torch.matmul(mixing, taps)


def phase_kernels(weight: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """A 3×3 ``weight`` (out, in, 3, 3) as the four phases' 2×2 kernels, (4·out, in, 2, 2), phase
    ``2a + b`` first; channels_last memory (as a channels_last convolution reads its weight)."""
    out_channels, in_channels = weight.shape[:2]
    by_phase = mixed_taps(weight, mixing).view(out_channels, 4, 4, in_channels).transpose(0, 1).contiguous()
    return by_phase.view(4 * out_channels, 2, 2, in_channels).permute(0, 3, 1, 2)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, mixing: torch.Tensor) -> torch.Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for a 3×3, padding-1 ``conv``."""
    n, _, height, width = x.shape
    layout = _layout_of(x)
    kernels = phase_kernels(conv.weight, mixing).contiguous(memory_format=layout)  # (a view if channels_last)
    phases = torch.nn.functional.conv2d(x, kernels, None, 1, 1)  # (n, 4·out, h + 1, w + 1)
    out_channels = conv.out_channels
    size = (n, out_channels, 2 * height, 2 * width)
    out = torch.empty(size, device=x.device, dtype=x.dtype, memory_format=layout)
    # out[:, :, 2i + a, 2j + b] = phases[:, phase (a, b), i + a, j + b] (+ bias)
    interleaved = out.view(n, out_channels, height, 2, width, 2)
    for a in (0, 1):
        for b in (0, 1):
            phase = 2 * a + b
            window = phases[
                :, phase * out_channels : (phase + 1) * out_channels, a : a + height, b : b + width
            ]
            target = interleaved[:, :, :, a, :, b]
            if conv.bias is None:
                target.copy_(window)
            elif torch.compiler.is_compiling():  # dynamo traces no out= view; inductor fuses these
                target.copy_(window + conv.bias.view(1, -1, 1, 1))
            else:
                torch.add(window, conv.bias.view(1, -1, 1, 1), out=target)
    return out


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def upsample_conv_transposed(x: torch.Tensor, conv: nn.Conv2d, mixing: torch.Tensor) -> torch.Tensor:
    """``upsample_conv`` as one stride-2 transposed convolution with a 4×4 kernel (``mixing`` of the
    "transposed" form), which writes the interleaved output itself."""
    out_channels, in_channels = conv.weight.shape[:2]
    kernel = mixed_taps(conv.weight, mixing).view(out_channels, 4, 4, in_channels).permute(3, 0, 1, 2)
    kernel = kernel.contiguous(memory_format=_layout_of(x))  # (in, out, 4, 4), laid out as the input is
    return torch.nn.functional.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)


def takes_subpixel_path(module: Any) -> bool:
    """Whether ``module`` is a diffusers ``Upsample2D`` that doubles by nearest-neighbour
    interpolation, then runs a plain 3×3 convolution (stride 1, padding 1), and nothing else."""
    conv = getattr(module, "conv", None) if getattr(module, "name", "conv") == "conv" else None
    return (
        type(module).__name__ == "Upsample2D"
        and getattr(module, "interpolate", False)
        and getattr(module, "use_conv", False)
        and not getattr(module, "use_conv_transpose", True)
        and getattr(module, "norm", None) is None
        and isinstance(conv, nn.Module)
        and _is_three_by_three(plain_conv(conv))
    )


def _is_three_by_three(conv: nn.Conv2d | None) -> bool:
    return (
        conv is not None
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _subpixel_forward(
    module: Any, hidden_states: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any
):
    conv = plain_conv(module.conv)
    doubled = tuple(2 * size for size in hidden_states.shape[-2:])
    if (
        conv is None
        or hidden_states.dim() != 4
        or (output_size is not None and tuple(output_size) != doubled)
        or conv.weight.device != hidden_states.device
        or args
        or kwargs
    ):
        return type(module).forward(module, hidden_states, output_size, *args, **kwargs)
    mixing = getattr(module, MIXING)
    if mixing.dtype != conv.weight.dtype:
        mixing = mixing.to(conv.weight.dtype)
    if module._subpixel_form == "transposed":
        return upsample_conv_transposed(hidden_states, conv, mixing)
    return upsample_conv(hidden_states, conv, mixing)


def install_subpixel_upsampling(model: Any, form: str = "phases") -> int:
    """Route ``model``'s eligible upsamplers through ``upsample_conv`` ("phases") or
    ``upsample_conv_transposed`` ("transposed"); returns how many."""
    routed = 0
    for module in model.modules():
        if takes_subpixel_path(module) and "forward" not in vars(module):
            weight = module.conv.weight
            mixing = tap_mixing(weight.device, weight.dtype, form)
            module.register_buffer(MIXING, mixing, persistent=False)
            module._subpixel_form = form
            module.forward = _subpixel_forward.__get__(module)
            routed += 1
    return routed


def undo_subpixel_upsampling(model: Any) -> int:
    """diffusers' own upsampling again; returns how many."""
    undone = 0
    for module in model.modules():
        if hasattr(module, MIXING) and "forward" in vars(module):
            del module.forward
            delattr(module, MIXING)
            del module._subpixel_form
            undone += 1
    return undone
