"""Inpainting: the working area around a mask, the pre-fill, holding the known region, pasting back.

The mask is binary for every decision: a pixel is repainted when its mask value is 128 or more
(white = repaint). Pixels outside it are never changed — the paste-back copies them from the
original byte for byte. Inside, the generated pixels are blended in through a feather that fades
*inward* from the mask's edge, so there is no seam and nothing outside moves.

The working area (Fooocus's "respective field" k): the mask's bounding box, enlarged 1.15× and made
square around its centre, then grown until it covers at least k of the image's width and height,
clipped to the image. It is rendered at about one megapixel (shape ceil 1024) and scaled back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageFilter

Box = tuple[int, int, int, int]
"""(left, top, right, bottom), right and bottom exclusive: Pillow's crop box."""

REPAINT_THRESHOLD = 128
INPAINT_FIELD = 0.618
OUTPAINT_FIELD = 1.0
WORKING_CEIL = 1024
_BOX_GROWTH = 1.15
# (radius, repeats) of the box blurs that fill the hole from its surroundings, for a 1024 px area.
_FILL_PASSES = ((512, 2), (256, 2), (128, 4), (64, 4), (33, 8), (15, 8), (5, 16), (3, 16))


def repaint_area(mask: Image.Image) -> np.ndarray:
    """The boolean array (height × width) of pixels to repaint."""
    return np.asarray(mask.convert("L")) >= REPAINT_THRESHOLD


def mask_bounding_box(mask: Image.Image) -> Box | None:
    """The smallest box holding every repaint pixel; None for an all-black mask."""
    rows, cols = np.nonzero(repaint_area(mask))
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def working_area(box: Box, width: int, height: int, field: float) -> Box:
    """The crop around ``box`` that is rendered, for an image of ``width``×``height`` (see module doc)."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top) * _BOX_GROWTH
    crop_w = min(width, math.ceil(max(side, field * width)))
    crop_h = min(height, math.ceil(max(side, field * height)))
    x0 = _fit(round((left + right) / 2 - crop_w / 2), crop_w, width)
    y0 = _fit(round((top + bottom) / 2 - crop_h / 2), crop_h, height)
    return x0, y0, x0 + crop_w, y0 + crop_h


def _fit(start: int, length: int, limit: int) -> int:
    return min(max(start, 0), limit - length)


def prefill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with its repaint area filled by repeated blurs of the surroundings (known pixels kept).

    A grey or noisy hole would steer the model toward grey or noise; a blurred continuation of
    the surroundings gives it the colours of the scene to start from.
    """
    hole = Image.fromarray((repaint_area(mask) * 255).astype(np.uint8), "L")
    scale = max(image.size) / WORKING_CEIL
    filled = image.copy()
    for radius, repeats in _FILL_PASSES:
        scaled = max(1, round(radius * scale))
        for _ in range(repeats):
            filled = Image.composite(filled.filter(ImageFilter.BoxBlur(scaled)), image, hole)
    return filled


def feather(mask: Image.Image, radius: int) -> np.ndarray:
    """Blend weights in [0, 1] (height × width): 0 outside the repaint area, fading up inside its edge."""
    area = repaint_area(mask)
    hard = Image.fromarray((area * 255).astype(np.uint8), "L")
    soft = np.asarray(hard.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    return np.where(area, np.minimum(soft * 2.0, 1.0), 0.0).astype(np.float32)


def feather_radius(box: Box) -> int:
    """The feather width for a working area: about 1/128 of its shorter side, at least 1 px."""
    left, top, right, bottom = box
    return max(1, round(min(right - left, bottom - top) / 128))


def paste_back(original: Image.Image, generated: Image.Image, mask: Image.Image, box: Box) -> Image.Image:
    """``generated`` (the working area, any size) blended into ``original`` at ``box`` under ``mask``.

    Every pixel outside the repaint area is the original's, exactly.
    """
    left, top, right, bottom = box
    patch = generated.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    weights = feather(mask.crop(box), feather_radius(box))[..., None]
    base = np.asarray(original.convert("RGB"), dtype=np.uint8).copy()
    region = base[top:bottom, left:right].astype(np.float32)
    mixed = region * (1.0 - weights) + np.asarray(patch, dtype=np.float32) * weights
    blended = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    base[top:bottom, left:right] = np.where(weights > 0.0, blended, base[top:bottom, left:right])
    return Image.fromarray(base, "RGB")


def latent_repaint_mask(mask: Image.Image, latent_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The repaint area at latent size (1 × 1 × h × w): a latent is repainted if any of its pixels is."""
    area = torch.from_numpy(repaint_area(mask).astype(np.float32))[None, None]
    height, width = latent_size
    pooled = torch.nn.functional.adaptive_max_pool2d(area, (height, width))
    return pooled.to(device=like.device, dtype=like.dtype)


@dataclass
class HoldKnownRegion:
    """After each step, outside the repaint mask the latents become the image's latents re-noised to
    the next step's noise level, so the model always sees the true surroundings (Fooocus's
    "energy" noise is drawn fresh each step from its own generator, seeded seed + 1).
    """

    scheduler: SchedulerMixin
    known: torch.Tensor
    repaint: torch.Tensor
    generator: torch.Generator

    def __call__(self, latents: torch.Tensor, next_index: int) -> torch.Tensor:
        timesteps = self.scheduler.timesteps
        if next_index >= len(timesteps):
            target = self.known
        else:
            # Without host syncs: the noise is drawn on the CPU generator and copied from pinned
            # memory without blocking, and the scheduler's add_noise (linear in sample and noise)
            # is evaluated on host scalars, where the loop keeps the scheduler's state.
            noise = pinned_randn(self.known.shape, self.generator, self.known.device, self.known.dtype)
            step = timesteps[next_index : next_index + 1].cpu()
            one, zero = torch.ones(1), torch.zeros(1)
            signal_scale = float(self.scheduler.add_noise(one, zero, step))
            noise_scale = float(self.scheduler.add_noise(zero, one, step))
            target = self.known * signal_scale + noise * noise_scale
        return self.repaint * latents + (1.0 - self.repaint) * target.to(latents.dtype)


def pinned_randn(
    shape: torch.Size, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``randn_tensor``'s values from a CPU generator, reaching a CUDA device without a blocking copy."""
    host = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
