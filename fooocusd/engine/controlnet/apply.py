"""Run a ControlNet beside the UNet: one ``UNetExtras`` provider per control image.

At each UNet call the ControlNet sees the same inputs as the UNet (latents, timestep, text tokens,
pooled embedding, ADM ids) plus the control map, repeated to the batch (uncond and cond alike, as
Fooocus does). Its residuals are scaled by the slot's weight and by Fooocus's "ControlNet
softness" (the shallowest residuals are damped: the i-th of the first ten by 1 − softness·(1 − i/9)),
and summed into the UNet's skip connections.

"Stop at" is measured like Fooocus (ComfyUI's timestep percent range) on the noise level, not on
the step count: the control applies while the diffusion progress p = 1 − t/999 of the call is below
``stop_at``. So img2img jobs, which start part-way, stop at the same noise level as a full render,
and ``stop_at`` 0 never applies the control.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from fooocusd.engine.controlnet.models import LoadedControlNet
from fooocusd.engine.denoise import UNetCall, UNetExtras
from fooocusd.engine.guidance import diffusion_progress

SOFTENED_RESIDUALS = 10


def control_tensor(control_map: Image.Image, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An RGB control map as the (1, 3, H, W) tensor in [0, 1] that ControlNets take."""
    pixels = np.asarray(control_map.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def softness_factors(count: int, softness: float) -> list[float]:
    """Per-residual scale: the first ten (shallowest first) by 1 − softness·(1 − i/9), the rest by 1."""
    last = SOFTENED_RESIDUALS - 1
    return [1.0 - softness * (1.0 - i / last) if i < SOFTENED_RESIDUALS else 1.0 for i in range(count)]


def active_calls(host_timesteps: Sequence[float], stop_at: float) -> list[bool]:
    """For each call index of the full schedule, whether a control with ``stop_at`` applies."""
    if stop_at >= 1.0:
        return [True] * len(host_timesteps)
    return [diffusion_progress(t) < stop_at for t in host_timesteps]


def control_net_extras(
    net: LoadedControlNet,
    control_map: Image.Image,
    *,
    weight: float,
    stop_at: float,
    host_timesteps: Sequence[float],
    softness: float,
    device: torch.device,
    dtype: torch.dtype,
) -> UNetExtras:
    """The provider adding ``net``'s residuals for ``control_map`` at ``weight`` until ``stop_at``."""
    active = active_calls(host_timesteps, stop_at)
    condition = control_tensor(control_map, device=device, dtype=dtype)
    by_batch: dict[int, torch.Tensor] = {}

    def provide(call: UNetCall) -> dict[str, Any]:
        if weight == 0.0 or call.index >= len(active) or not active[call.index]:
            return {}
        batch = call.model_input.shape[0]
        if batch not in by_batch:
            by_batch[batch] = condition.expand(batch, -1, -1, -1)
        down, mid = _run(net, call, by_batch[batch], weight)
        scales = softness_factors(len(down) + 1, softness)
        down = [residual * scale for residual, scale in zip(down, scales, strict=False)]
        return {
            "down_block_additional_residuals": down,
            "mid_block_additional_residual": mid * scales[len(down)],
        }

    return provide


def _run(
    net: LoadedControlNet, call: UNetCall, condition: torch.Tensor, weight: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    model = net.model
    condition = condition.to(dtype=model.dtype)
    common: dict[str, Any] = {
        "encoder_hidden_states": call.tokens.to(dtype=model.dtype),
        "added_cond_kwargs": {"text_embeds": call.pooled, "time_ids": call.time_ids},
        "conditioning_scale": weight,
        "return_dict": False,
    }
    if net.union_index is None:
        down, mid = model(call.model_input, call.timestep, controlnet_cond=condition, **common)
    else:
        batch = call.model_input.shape[0]
        control_type = torch.zeros(batch, net.num_control_types, device=condition.device, dtype=model.dtype)
        control_type[:, net.union_index] = 1.0
        down, mid = model(
            call.model_input,
            call.timestep,
            controlnet_cond=[condition],
            control_type=control_type,
            control_type_idx=[net.union_index],
            **common,
        )
    return list(down), mid
