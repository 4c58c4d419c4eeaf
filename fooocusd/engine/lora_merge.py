"""Active LoRAs folded into the UNet's weights, so that they cost nothing per denoising step.

peft runs a LoRA as extra layers beside each targeted weight: two small matmuls, a scale and an add
per layer, per UNet call. On an H100 an active rank-8 LoRA on every attention projection added
0.19 s to a 512², 4-step image (docs/benchmarks.md), and Fooocus's default preset always has one.
Folding ``W + Σ weightᵢ·ΔWᵢ`` into the base weight once per LoRA change removes that cost: the image
then runs exactly as fast as without LoRAs.

Each folded weight's original is kept (on the CPU) and copied back before the next change, instead
of subtracting the deltas again: in bf16 ``(W + Δ) − Δ`` is not ``W``, and a daemon that switches
LoRAs thousands of times would drift. The text encoders keep peft's unfolded layers (they run once
per prompt). Not used with fp8 weights (they are not plain tensors) or in low-VRAM mode (weights
stream between devices), nor for adapter variants that are not a plain low-rank delta (DoRA):
there the peft layers stay active.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class FoldedUNetLoras:
    """Which LoRAs (adapter name, weight) are folded into one UNet, and the weights they replaced."""

    def __init__(self) -> None:
        self._originals: dict[nn.Module, torch.Tensor] = {}
        self._folded: tuple[tuple[str, float], ...] = ()

    @property
    def folded(self) -> tuple[tuple[str, float], ...]:
        return self._folded

    def fold(self, unet: nn.Module, adapters: Sequence[tuple[str, float]]) -> bool:
        """Make exactly ``adapters`` folded into ``unet`` and turn its peft layers off.

        Call after ``set_adapters`` (peft's scaling then holds each weight). Returns False, leaving
        the peft layers to run, when an adapter is not a plain low-rank delta."""
        wanted = tuple(adapters)
        layers = lora_layers(unet)
        if wanted != self._folded:
            self.restore()
            if any(_has_variant(layer, name) for layer in layers for name, _ in wanted):
                return False
            with torch.no_grad():
                for layer in layers:
                    self._fold_layer(layer, [name for name, _ in wanted if name in layer.lora_A])
            self._folded = wanted
        for layer in layers:
            layer.enable_adapters(False)
        return True

    def _fold_layer(self, layer: Any, names: list[str]) -> None:
        if not names:
            return
        weight = layer.get_base_layer().weight
        self._originals[layer] = weight.detach().to("cpu", copy=True)
        folded = weight.detach().float()
        for name in names:
            folded += layer.get_delta_weight(name).float()
        weight.copy_(folded.to(weight.dtype))

    def restore(self) -> None:
        """Copy every folded weight's original back, bit for bit."""
        with torch.no_grad():
            for layer, original in self._originals.items():
                weight = layer.get_base_layer().weight
                weight.copy_(original.to(weight.device, non_blocking=False))
        self._originals.clear()
        self._folded = ()

    def forget(self) -> None:
        """The UNet was replaced: its weights went with it, there is nothing to restore."""
        self._originals.clear()
        self._folded = ()


def lora_layers(module: nn.Module) -> list[Any]:
    """peft's LoRA layers inside ``module``."""
    from peft.tuners.lora import LoraLayer

    return [layer for layer in module.modules() if isinstance(layer, LoraLayer)]


def _has_variant(layer: Any, name: str) -> bool:
    if name not in layer.lora_A:
        return False
    return bool(getattr(layer, "use_dora", {}).get(name)) or name in getattr(layer, "lora_variant", {})
