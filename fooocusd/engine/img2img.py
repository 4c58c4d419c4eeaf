"""Starting the denoising loop from an image: sizes, the partial noise schedule, VAE encoding.

Sizes follow Fooocus's "shape ceil": √(width·height) rounded up to a multiple of 64. Vary clamps
it to [1024, 2048] and rescales the image to that ceil with sides rounded to 64.

Strength (Fooocus's denoise) works as in ComfyUI/Fooocus, not as in diffusers: a job of ``steps``
steps at strength s builds the schedule for ``steps / s`` steps and runs its last ``steps``, so
the number of model calls (and the progress bar) does not depend on the strength.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from fooocusd.engine.base import ImageTask
from fooocusd.engine.denoise import StepBlend, initial_latents
from fooocusd.engine.inpaint import HoldKnownRegion, latent_repaint_mask

VARY_STRENGTH = {"vary_subtle": 0.5, "vary_strong": 0.85}
VARY_MIN_CEIL, VARY_MAX_CEIL = 1024, 2048
CEIL_MULTIPLE = 64
_MAX_SCHEDULE_STEPS = 1000  # the training schedule's length: no scheduler accepts more


def shape_ceil(width: int, height: int) -> int:
    """√(width·height) rounded up to a multiple of 64."""
    return math.ceil(math.sqrt(width * height) / CEIL_MULTIPLE) * CEIL_MULTIPLE


def size_for_ceil(width: int, height: int, ceil: int) -> tuple[int, int]:
    """The aspect ratio of ``width``×``height`` rescaled so that its shape ceil is ``ceil``; sides ×64."""
    scale = ceil / math.sqrt(width * height)
    return (
        max(CEIL_MULTIPLE, round(width * scale / CEIL_MULTIPLE) * CEIL_MULTIPLE),
        max(CEIL_MULTIPLE, round(height * scale / CEIL_MULTIPLE) * CEIL_MULTIPLE),
    )


def vary_size(width: int, height: int) -> tuple[int, int]:
    """The size a Vary job renders an image of ``width``×``height`` at (Fooocus §7.1)."""
    ceil = min(max(shape_ceil(width, height), VARY_MIN_CEIL), VARY_MAX_CEIL)
    return size_for_ceil(width, height, ceil)


def strength_schedule(steps: int, strength: float) -> tuple[int, int]:
    """(steps to give ``set_timesteps``, index of the first step to run) for ``steps`` at ``strength``."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    scheduled = min(max(steps, int(steps / strength)), _MAX_SCHEDULE_STEPS)
    return scheduled, max(scheduled - steps, 0)


def encode_image(vae: Any, image_processor: Any, image: Image.Image, *, tiled: bool) -> torch.Tensor:
    """``image`` → normalised SDXL latents (the inverse of the engine's decode), in the VAE's dtype.

    The distribution's mean is used, so the same image always gives the same latents.
    """
    pixels = image_processor.preprocess(image).to(device=vae.device, dtype=vae.dtype)
    with _vae_tiling(vae, tiled):
        latents = vae.encode(pixels).latent_dist.mode()
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        return (latents - mean_t) * vae.config.scaling_factor / std_t
    return latents * vae.config.scaling_factor


def noised_start(
    scheduler: SchedulerMixin,
    clean: torch.Tensor,
    start_index: int,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """``clean`` latents noised to the level of ``scheduler.timesteps[start_index]`` (timesteps set).

    At index 0 this is almost pure noise that still carries a trace of ``clean``: inpainting's
    pre-filled area then nudges the composition, as Fooocus's initial latent does.
    """
    noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_index)
    return scheduler.add_noise(clean, noise, scheduler.timesteps[start_index : start_index + 1])


def first_step_index(scheduler: SchedulerMixin, start_step: int) -> int:
    """Index into ``scheduler.timesteps`` of step ``start_step`` (2nd-order schedulers list steps twice)."""
    return start_step * int(getattr(scheduler, "order", 1))


class _vae_tiling:
    """Turn diffusers' tiled VAE encode/decode on for the duration of a block."""

    def __init__(self, vae: Any, tiled: bool) -> None:
        self.vae = vae
        self.tiled = tiled and hasattr(vae, "enable_tiling")
        self.was_tiled = bool(getattr(vae, "use_tiling", False))

    def __enter__(self) -> None:
        if self.tiled:
            self.vae.enable_tiling()

    def __exit__(self, *_: object) -> None:
        if self.tiled and not self.was_tiled:
            self.vae.disable_tiling()


def vae_tiling(vae: Any, tiled: bool) -> _vae_tiling:
    return _vae_tiling(vae, tiled)


@dataclass(frozen=True)
class ImageStart:
    """Where the denoising loop starts for an image task."""

    latents: torch.Tensor
    start_index: int
    blend: StepBlend | None


def prepare_image_start(
    pipeline: Any,
    scheduler: SchedulerMixin,
    task: ImageTask,
    steps: int,
    render_size: tuple[int, int],
    *,
    seed: int,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> ImageStart:
    """Set the scheduler's timesteps for ``task.strength`` and build the starting latents.

    The image (and mask) are resized to ``render_size`` first: that is the request's size, except
    for tiny-random, which renders smaller.
    """
    image = task.image.convert("RGB")
    if image.size != render_size:
        image = image.resize(render_size, Image.Resampling.LANCZOS)
    scheduled, start_step = strength_schedule(steps, task.strength)
    device = pipeline.vae.device  # not the UNet's: low-VRAM mode stages the UNet in system memory
    scheduler.set_timesteps(scheduled, device=device)
    start_index = first_step_index(scheduler, start_step)
    clean = encode_image(pipeline.vae, pipeline.image_processor, image, tiled=task.tiled_vae)
    clean = clean.to(device=device, dtype=dtype)
    latents = noised_start(scheduler, clean, start_index, generator=generator)
    if task.mask is None:
        return ImageStart(latents, start_index, None)
    mask = task.mask.convert("L").resize(render_size, Image.Resampling.NEAREST)
    repaint = latent_repaint_mask(mask, (clean.shape[-2], clean.shape[-1]), clean)
    # The inpaint "energy" noise has its own generator so the main noise sequence stays the seed's.
    energy = torch.Generator(device="cpu").manual_seed((seed + 1) % 2**63)
    return ImageStart(latents, start_index, HoldKnownRegion(scheduler, clean, repaint, energy))


def start_for(
    pipeline: Any,
    scheduler: SchedulerMixin,
    task: ImageTask | None,
    steps: int,
    render_size: tuple[int, int],
    *,
    seed: int,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> ImageStart:
    """Where the loop starts: the scheduler's noise at ``render_size`` for text to image, else the
    image task's noised latents (``prepare_image_start``)."""
    if task is not None:
        return prepare_image_start(
            pipeline, scheduler, task, steps, render_size, seed=seed, generator=generator, dtype=dtype
        )
    width, height = render_size
    factor = pipeline.vae_scale_factor
    shape = (1, pipeline.unet.config.in_channels, height // factor, width // factor)
    latents = initial_latents(scheduler, steps, shape, generator=generator, device=device, dtype=dtype)
    return ImageStart(latents, 0, None)
