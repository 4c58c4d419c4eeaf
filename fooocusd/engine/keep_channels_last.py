"""Keep a channels_last UNet's tensors channels_last between layers (``engine.keep_channels_last``).

Why: on a channels_last UNet two things copy activations to the NCHW layout and back. PyTorch's
CUDA GroupNorm works on NCHW-contiguous tensors only, so each GroupNorm copies its input out of
channels_last (and the convolution or the transformer's projection after it copies the result
back), and diffusers' ``Transformer2DModel`` ends with ``.contiguous()``, an NCHW copy of its
output that the next convolution converts again. In the profile of a batch of 4 at 1024² on an H100
(docs/benchmarks.md, 2026-11-27) those copies were 22 % of the GPU's time and GroupNorm itself
another 15 %: about 2 copies per GroupNorm.

Here, for channels_last inputs, GroupNorm's statistics come from two reductions over the pixels
with the channels innermost (the layout already in memory: no copy), summed per group in float32,
and the normalisation and affine transform are one multiply-add per element written straight into
a channels_last output (three passes over the tensor instead of about seven); and the transformers'
output stays a channels_last view (the same values, no copy). Anything that is not a 4-D
channels_last tensor goes to PyTorch's own GroupNorm. On by default since the fourth H100 check
(docs/benchmarks.md): one 1024² image 1.49 → 1.25 s, the layout copies 23.5 % → 2.5 % of the GPU's
time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fooocusd.engine import triton_group_norm

TRANSFORMER_OUTPUT = "_get_output_for_continuous_inputs"
"""The ``Transformer2DModel`` method (diffusers 0.2x–0.4x) that ends in ``.contiguous()``."""


@dataclass(frozen=True)
class KeptLayout:
    """How many modules of a model now keep channels_last."""

    group_norms: int = 0
    transformer_outputs: int = 0

    def __add__(self, other: KeptLayout) -> KeptLayout:
        return KeptLayout(
            self.group_norms + other.group_norms, self.transformer_outputs + other.transformer_outputs
        )


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
    mean = sums.view(n, groups, per_group).sum(-1, keepdim=True) / count  # (n, groups, 1)
    mean_square = squares.view(n, groups, per_group).sum(-1, keepdim=True) / count
    rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0.0) + eps)
    gain = weight.float() if weight is not None else torch.ones_like(sums[0])
    scale = rstd * gain.view(groups, per_group)  # (n, groups, per_group): per channel
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float().view(groups, per_group)
    scale, shift = scale.view(n, 1, c), shift.view(n, 1, c)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    flat_out = out.permute(0, 2, 3, 1).view(n, h * w, c)
    torch.addcmul(shift, pixels, scale, out=flat_out)
    return out


@functools.cache
def compiled_group_norm_channels_last() -> Callable[..., torch.Tensor]:
    """``group_norm_channels_last`` under torch.compile, shapes dynamic (a few compiles per channel
    count, not one per image size). Eager, its statistics are two passes over the tensor and its
    multiply-add mixes bf16 pixels with float32 factors, which PyTorch runs as a slow, unvectorised
    kernel (94 ms of a profiled 1,288, where a SiLU pass takes 21): compiled, the sums share one
    pass and the multiply-add is one vectorised kernel with float32 arithmetic. An experiment of the
    GPU check (``batch_4_compiled_group_norm``), not an engine setting yet."""
    return torch.compile(group_norm_channels_last, dynamic=True, fullgraph=True)


def is_channels_last_image(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _group_norm_forward(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    if is_channels_last_image(x):
        return group_norm_channels_last(x, module.num_groups, module.weight, module.bias, module.eps)
    return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)


def _compiled_group_norm_forward(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    if is_channels_last_image(x):
        compiled = compiled_group_norm_channels_last()
        return compiled(x, module.num_groups, module.weight, module.bias, module.eps)
    return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)


def _triton_group_norm_forward(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Our Triton GroupNorm (``triton_group_norm.group_norm``: one reduction pass and one vectorised
    pass) where it runs: a channels_last CUDA tensor, a norm with weight and bias."""
    if is_channels_last_image(x) and module.affine and triton_group_norm.available(x):
        return triton_group_norm.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
    return _group_norm_forward(module, x)


GROUP_NORM_FORWARDS = {
    "eager": _group_norm_forward,
    "compiled": _compiled_group_norm_forward,
    "triton": _triton_group_norm_forward,
}
"""How kept GroupNorms run on channels_last inputs: PyTorch operators (``group_norm_channels_last``),
those under torch.compile (an experiment of the GPU check), or our Triton kernels (the engine's
choice wherever the fused resnet norms run them)."""


def _transformer_output(
    module: Any,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
    batch_size: int,
    height: int,
    width: int,
    inner_dim: int,
) -> torch.Tensor:
    """diffusers' continuous-input output without its ``.contiguous()``: a channels_last view."""
    if not module.use_linear_projection:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = module.proj_out(hidden_states)
    else:
        hidden_states = module.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return hidden_states + residual


def _is_continuous_transformer(module: Any) -> bool:
    return (
        hasattr(type(module), TRANSFORMER_OUTPUT)
        and hasattr(module, "use_linear_projection")
        and hasattr(module, "proj_out")
    )


def keep_channels_last(model: Any, *, norm: str = "eager") -> KeptLayout:
    """Route ``model``'s GroupNorms and transformer outputs through the channels_last versions
    above; returns how many. Weights stay the same tensors (LoRA folding, CUDA graphs).
    ``norm``: how the GroupNorms run (``GROUP_NORM_FORWARDS``)."""
    if norm not in GROUP_NORM_FORWARDS:
        raise ValueError(f"norm must be one of {tuple(GROUP_NORM_FORWARDS)}, not {norm!r}")
    group_norm_forward = GROUP_NORM_FORWARDS[norm]
    group_norms = transformer_outputs = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and "forward" not in vars(module):
            module.forward = group_norm_forward.__get__(module)  # type: ignore[method-assign]
            group_norms += 1
        elif _is_continuous_transformer(module) and TRANSFORMER_OUTPUT not in vars(module):
            setattr(module, TRANSFORMER_OUTPUT, _transformer_output.__get__(module))
            transformer_outputs += 1
    return KeptLayout(group_norms, transformer_outputs)


def undo_keep_channels_last(model: Any) -> KeptLayout:
    """PyTorch's GroupNorm and diffusers' transformer output again; returns how many."""
    group_norms = transformer_outputs = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and "forward" in vars(module):
            del module.forward
            group_norms += 1
        elif TRANSFORMER_OUTPUT in vars(module):
            delattr(module, TRANSFORMER_OUTPUT)
            transformer_outputs += 1
    return KeptLayout(group_norms, transformer_outputs)
