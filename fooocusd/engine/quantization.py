"""fp8 weights for the UNet (``engine.quantize = "fp8"``), with torchao (the ``fp8`` extra).

What is quantised: every ``nn.Linear`` inside the UNet's transformer blocks (the attention
projections, the feed-forward layers, ``proj_in``/``proj_out``), which hold about two thirds of a
step's FLOPs. Their weights become float8 e4m3 with one scale per output row, and at run time each
input row is scaled and cast to float8 too (dynamic activation scaling), so the matmul runs on the
fp8 tensor cores (``torch._scaled_mm``) and returns bfloat16. Convolutions, attention itself, norms
and the time and size embeddings stay bfloat16: the embeddings see one row per image, so fp8 has
nothing to speed up there and only precision to lose. A layer whose sizes are not multiples of 16
stays bfloat16 (the fp8 kernels need that). The bfloat16 weight is replaced, not kept: those layers
take half the memory.

The weights are converted with torchao's ``Float8Tensor`` directly, with the settings of torchao's
``Float8DynamicActivationFloat8WeightConfig`` (per-row), instead of through ``quantize_``: its
hardware check refuses the CPU, where the tensor itself works (torch has a CPU ``_scaled_mm``).
That lets the tests check the numerics on a CPU; the planner (``acceleration.py``) still turns fp8
on only on CUDA GPUs of compute capability 8.9 or newer.

LoRAs: peft recognises torchao weights and wraps such a layer in its ``TorchaoLoraLinear``, which
runs the LoRA in bfloat16 beside the fp8 base layer (never merged into it), so a job with a LoRA
works, and switching LoRAs never touches the fp8 weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

TRANSFORMER_SCOPE = ".attentions."
"""UNet module names inside a Transformer2DModel (down, mid and up blocks)."""
FP8_ALIGNMENT = 16
FP8_WEIGHT_DTYPE = torch.bfloat16
"""Per-row fp8 scaling is computed from bfloat16 weights."""


@dataclass
class QuantizationResult:
    """What ``quantize_unet_fp8`` did: layers converted, layers left in bfloat16 and why, memory saved."""

    layers: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_saved: int = 0

    def record(self) -> dict[str, Any]:
        return {"quantized_layers": self.layers, "quantize_skipped_layers": len(self.skipped)}


def transformer_linears(unet: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The UNet's Linear layers inside transformer blocks, in module order."""
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and TRANSFORMER_SCOPE in f".{name}":
            yield name, module


def unfit_for_fp8(linear: nn.Linear) -> str:
    """Why ``linear`` must stay in high precision; empty when it can take fp8 weights."""
    weight = linear.weight
    if is_fp8(weight):
        return "already fp8"
    out_features, in_features = weight.shape
    if in_features % FP8_ALIGNMENT or out_features % FP8_ALIGNMENT:
        return f"{in_features}→{out_features} features are not multiples of {FP8_ALIGNMENT}"
    if weight.dtype != FP8_WEIGHT_DTYPE:
        return f"weights are {str(weight.dtype).removeprefix('torch.')}, per-row fp8 needs bfloat16"
    return ""


def quantize_unet_fp8(unet: nn.Module) -> QuantizationResult:
    """Replace the UNet's transformer Linear weights by fp8 weights with dynamic fp8 activations."""
    to_fp8 = _fp8_converter()
    result = QuantizationResult()
    for name, linear in transformer_linears(unet):
        reason = unfit_for_fp8(linear)
        if reason:
            result.skipped[name] = reason
            continue
        weight = linear.weight.detach()
        quantized = to_fp8(weight)
        linear.weight = nn.Parameter(quantized, requires_grad=False)
        result.layers += 1
        result.bytes_saved += weight.numel() * (weight.element_size() - 1)
    return result


def is_fp8(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a torchao float8 tensor (a quantised weight)."""
    qdata = getattr(weight, "qdata", None)
    return isinstance(qdata, torch.Tensor) and qdata.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_layer_count(unet: nn.Module) -> int:
    return sum(1 for _name, linear in transformer_linears(unet) if is_fp8(linear.weight))


def _fp8_converter() -> Any:
    """bfloat16 weight → torchao ``Float8Tensor`` with per-row scales and per-row dynamic activations."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8Tensor, PerRow
    from torchao.quantization.quantize_.workflows import QuantizeTensorToFloat8Kwargs

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    activation_granularity, weight_granularity = config.granularity
    activations = QuantizeTensorToFloat8Kwargs(
        config.activation_dtype, activation_granularity, kernel_preference=config.kernel_preference
    )

    def to_fp8(weight: torch.Tensor) -> torch.Tensor:
        return Float8Tensor.from_hp(
            weight,
            float8_dtype=config.weight_dtype,
            granularity=weight_granularity,
            mm_config=config.mm_config,
            kernel_preference=config.kernel_preference,
            act_quant_kwargs=activations,
        )

    return to_fp8
