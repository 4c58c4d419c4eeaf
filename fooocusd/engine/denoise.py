"""The denoising loop: diffusers' SDXL loop plus Fooocus's sharpness, adaptive CFG and ADM switch.

With the refinements off (sharpness 0, adaptive CFG ≥ CFG, ADM scalers 1/1 or end 0) it performs
exactly the operations of ``StableDiffusionXLPipeline.__call__`` in the same order, so a seed gives
the same latents. Per step: one UNet call on the batch (uncond, cond) — or (cond) alone at CFG 1.0,
Fooocus's shortcut, which then also skips sharpness — then the scheduler's ``step`` with the
seeded generator.

Batches: ``latents`` may hold N images (``conditioning`` then has N rows per side, see
``conditioning.stack_conditionings``); the UNet sees 2N rows (N uncond, then N cond) and every
guidance operation works per image. ``generator`` is then a list of N per-image generators, which
diffusers' ``randn_tensor`` draws from row by row, so each image's per-step noise is its own seed's.

Step-dependent numbers (progress p, α, the ADM switch, σ) are computed on the host from one copy
of the timesteps made before the loop, so the loop adds no host–device syncs of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from fooocusd.engine.base import ProgressCallback, StopCheck
from fooocusd.engine.conditioning import Conditioning, match_sequence_lengths, uses_emphasized_adm
from fooocusd.engine.guidance import (
    diffusion_progress,
    guided_noise_prediction,
    noise_levels,
    sharpen_noise_prediction,
    sharpness_weight,
)
from fooocusd.engine.host_schedule import HostSchedule
from fooocusd.engine.step_noise import noise_pinned_step
from fooocusd.errors import Interrupted, InvalidInput

NoisePredictor = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
"""``predict(model_input, timestep, token_embeddings, pooled_embeddings, time_ids) -> model output``."""

StepBlend = Callable[[torch.Tensor, int], torch.Tensor]
"""``blend(latents, next_index) -> latents``, applied after each scheduler step."""


@dataclass(frozen=True)
class GuidanceSettings:
    """The per-step guidance knobs. ``adm_end``: share of the timestep range using emphasized ADM ids."""

    cfg: float
    sharpness: float = 0.0
    adaptive_cfg: float = 7.0
    adm_end: float = 0.0

    def __post_init__(self) -> None:
        _require(self.cfg >= 1.0, "cfg", self.cfg, "use 1.0 to 30")
        _require(self.sharpness >= 0.0, "sharpness", self.sharpness, "use 0 to 30 (Fooocus default 2.0)")
        _require(self.adaptive_cfg >= 1.0, "adaptive_cfg", self.adaptive_cfg, "use 1.0 to 30 (default 7.0)")
        _require(0.0 <= self.adm_end <= 1.0, "adm_scaler_end", self.adm_end, "use 0 to 1 (default 0.3)")

    @property
    def uses_cfg(self) -> bool:
        return self.cfg > 1.0


def _require(ok: bool, name: str, value: float, hint: str) -> None:
    if not ok:
        raise InvalidInput(f"{name} {value} is out of range", where=name, hint=hint)


@dataclass(frozen=True)
class UNetCall:
    """One model call as the loop makes it; what ``UNetExtras`` providers see."""

    index: int
    """Position of this call in the full schedule (img2img starts part-way in)."""
    model_input: torch.Tensor
    timestep: torch.Tensor
    tokens: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor


UNetExtras = Callable[[UNetCall], dict[str, Any]]
"""Extra keyword arguments for one UNet call (ControlNet residuals, IP-Adapter image embeddings ...).

Return ``{}`` to add nothing (e.g. after a "stop at" point). Results of several providers are merged:
``down_block_additional_residuals`` and ``mid_block_additional_residual`` are summed, and
``added_cond_kwargs`` / ``cross_attention_kwargs`` entries are combined.
"""


def unet_noise_predictor(
    unet: torch.nn.Module, extras: Sequence[UNetExtras] = (), *, first_call_index: int = 0
) -> NoisePredictor:
    """Call a diffusers SDXL UNet the way the stock pipeline does, plus what ``extras`` add."""
    calls = first_call_index

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        call = UNetCall(calls, *inputs)
        calls += 1
        added = merge_unet_extras([provider(call) for provider in extras])
        return call_unet(unet, *inputs, **added)

    return predict


def call_unet(
    unet: torch.nn.Module,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    time_ids: torch.Tensor,
    **added: Any,
) -> torch.Tensor:
    """One SDXL UNet call, as the stock pipeline makes it; ``added``: merged ``UNetExtras``."""
    added_cond = {"text_embeds": pooled, "time_ids": time_ids, **added.pop("added_cond_kwargs", {})}
    return unet(
        model_input,
        timestep,
        encoder_hidden_states=tokens,
        timestep_cond=None,
        cross_attention_kwargs=added.pop("cross_attention_kwargs", None) or None,
        added_cond_kwargs=added_cond,
        return_dict=False,
        **added,
    )[0]


_SUMMED = ("down_block_additional_residuals", "mid_block_additional_residual")
_COMBINED = ("added_cond_kwargs", "cross_attention_kwargs")


def merge_unet_extras(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge the keyword arguments of several ``UNetExtras`` results for one call."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in merged:
                merged[key] = list(value) if key == _SUMMED[0] else dict(value) if key in _COMBINED else value
            elif key == _SUMMED[0]:
                merged[key] = [mine + theirs for mine, theirs in zip(merged[key], value, strict=True)]
            elif key == _SUMMED[1]:
                merged[key] = merged[key] + value
            elif key in _COMBINED:
                merged[key].update(value)
            else:
                raise ValueError(f"two UNet extras both set {key!r}")
    return merged


def initial_latents(
    scheduler: SchedulerMixin,
    steps: int,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Set the scheduler's timesteps and draw the starting noise, in the stock pipeline's order."""
    scheduler.set_timesteps(steps, device=device)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    return noise * scheduler.init_noise_sigma


def denoise(
    predict: NoisePredictor,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    conditioning: Conditioning,
    settings: GuidanceSettings,
    *,
    generator: torch.Generator | list[torch.Generator],
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    start_index: int = 0,
    blend: StepBlend | None = None,
) -> torch.Tensor:
    """Run the timesteps of ``scheduler`` (already ``set_timesteps``) from ``latents``; returns latents.

    ``start_index`` skips the first timesteps (img2img: ``latents`` are already noised to that
    step). ``blend(latents, next_index)`` runs after every step (inpaint: hold the known region).
    """
    use_cfg = settings.uses_cfg and conditioning.negative is not None
    batch = _UNetBatch.build(conditioning, use_cfg)
    schedule = HostSchedule.take(scheduler)  # the loop's only device→host copy; the scheduler runs on the CPU
    timesteps, host_timesteps = schedule.device_timesteps, schedule.values
    step = noise_pinned_step(scheduler)
    sharpening = use_cfg and settings.sharpness > 0.0
    sigmas = noise_levels(scheduler.alphas_cumprod, host_timesteps) if sharpening else []
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    step_options = _step_options(scheduler, generator)
    total = len(timesteps) - start_index
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_index)

    for index, timestep in enumerate(timesteps[start_index:], start=start_index):
        now = host_timesteps[index]
        model_input = torch.cat([latents] * 2) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, schedule.host_timesteps[index])
        time_ids = (
            batch.emphasized_ids if uses_emphasized_adm(now, settings.adm_end) else batch.consistent_ids
        )
        output = predict(model_input, timestep, batch.tokens, batch.pooled, time_ids)
        if use_cfg:
            uncond, cond = output.chunk(2)
            p = diffusion_progress(now)
            if sharpening:
                cond = _sharpen(
                    cond,
                    model_input.chunk(2)[1],  # the cond rows (one per image)
                    sigmas[index],
                    sharpness_weight(settings.sharpness, p),
                    prediction_type,
                )
            output = guided_noise_prediction(uncond, cond, settings.cfg, settings.adaptive_cfg, p)
        latents = step(output, schedule.host_timesteps[index], latents, **step_options, return_dict=False)[0]
        if blend is not None:
            latents = blend(latents, index + 1)
        _after_step(index + 1 - start_index, total, progress, should_stop)
    return latents


@dataclass(frozen=True)
class _UNetBatch:
    tokens: torch.Tensor
    pooled: torch.Tensor
    emphasized_ids: torch.Tensor
    consistent_ids: torch.Tensor

    @classmethod
    def build(cls, conditioning: Conditioning, use_cfg: bool) -> _UNetBatch:
        positive, ids = conditioning.positive, conditioning.time_ids
        if not use_cfg:
            return cls(positive.tokens, positive.pooled, ids.emphasized_positive, ids.consistent)
        negative = conditioning.negative
        assert negative is not None
        negative_tokens, positive_tokens = match_sequence_lengths(negative.tokens, positive.tokens)
        return cls(
            tokens=torch.cat([negative_tokens, positive_tokens]),
            pooled=torch.cat([negative.pooled, positive.pooled]),
            emphasized_ids=torch.cat([ids.emphasized_negative, ids.emphasized_positive]),
            consistent_ids=torch.cat([ids.consistent, ids.consistent]),
        )


def _sharpen(
    output: torch.Tensor, model_input: torch.Tensor, sigma: float, alpha: float, prediction_type: str
) -> torch.Tensor:
    """Sharpness on the conditional prediction, in whatever the model predicts (ε or v).

    The UNet input is x/√(σ²+1) for the k-diffusion sample x = x0 + σ·ε (the same point in every
    scheduler's parameterisation), so x0 = input·√(σ²+1) − σ·ε.
    """
    if alpha == 0.0:
        return output
    scale = (sigma * sigma + 1.0) ** 0.5
    if prediction_type == "v_prediction":
        # input = a·x0 + s·ε and v = a·ε − s·x0 with a = 1/√(σ²+1), s = σ·a.
        a, s = 1.0 / scale, sigma / scale
        eps = s * model_input + a * output
        x0 = a * model_input - s * output
        return output + (sharpen_noise_prediction(eps, x0, alpha) - eps) / a
    if prediction_type != "epsilon":
        return output  # sample-predicting models: no ε to filter
    x0 = model_input * scale - sigma * output
    return sharpen_noise_prediction(output, x0, alpha)


def _step_options(scheduler: SchedulerMixin, generator: torch.Generator) -> dict[str, object]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    options: dict[str, object] = {}
    if "eta" in accepted:
        options["eta"] = 0.0
    if "generator" in accepted:
        options["generator"] = generator
    return options


def _after_step(
    done: int, total: int, progress: ProgressCallback | None, should_stop: StopCheck | None
) -> None:
    if progress is not None:
        progress(done, total)
    if should_stop is not None and done < total and should_stop():
        raise Interrupted(
            f"stopped after step {done} of {total} because shutdown was requested",
            hint="the job goes back to the queue and starts again from the first step",
        )
