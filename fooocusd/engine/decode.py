"""Denoised latents → one PIL image, through the pipeline's VAE and image processor."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from fooocusd.engine.base import GenerationRequest


def decode_latents(
    vae: Any, image_processor: Any, latents: torch.Tensor, *, latent_statistics: bool
) -> Image.Image:
    """Undo the VAE's latent normalisation, decode, and post-process to RGB.

    ``latent_statistics``: an SDXL VAE whose config carries ``latents_mean``/``latents_std`` is
    de-normalised with them (the inverse of ``img2img.encode_image``); SD 1.x/2.x latents are only
    scaled by ``scaling_factor``. ``vae`` and ``image_processor`` are a pipeline's.
    """
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean = getattr(vae.config, "latents_mean", None) if latent_statistics else None
    std = getattr(vae.config, "latents_std", None) if latent_statistics else None
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = latents * std_t / vae.config.scaling_factor + mean_t
    else:
        latents = latents / vae.config.scaling_factor
    pixels = vae.decode(latents, return_dict=False)[0]
    return pixels_to_image(image_processor, pixels)


def pixels_to_image(image_processor: Any, pixels: torch.Tensor) -> Image.Image:
    """The first decoded image as a PIL image: ``image_processor.postprocess(pixels, "pil")[0]``,
    with the same bytes, but quantised to 8 bits where the pixels are.

    diffusers copies the decoded floats to the host and scales, rounds and casts them there with
    NumPy, on the thread that asked for the picture. Here the device does that arithmetic (the same
    IEEE float32 multiply and round-half-to-even, so the same bytes) and only a quarter of the float
    bytes are copied back (half of bfloat16's).
    """
    image = image_processor.postprocess(pixels, output_type="pt")[0]  # denormalised, on the device
    quantised = (image.float() * 255).round().to(torch.uint8)
    array = quantised.permute(1, 2, 0).contiguous().cpu().numpy()
    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0])  # 8-bit grey ("L")
    return Image.fromarray(array)


def at_requested_size(image: Image.Image, request: GenerationRequest) -> Image.Image:
    """An image task may render at another size than it asked for; its result goes back at the request's."""
    if request.image_task is not None and image.size != (request.width, request.height):
        return image.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return image
