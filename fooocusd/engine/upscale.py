"""Upscaling: super-resolution through spandrel (ESRGAN family and others), tiled, plus Fooocus's size plan.

The plan (Fooocus §7.1): the image is super-resolved, then resampled to exactly W·f × H·f. A result
whose shape ceil is under 1024 is enlarged to ceil 1024 instead. "Fast 2x" and results with a shape
ceil over 2800 stop there; the rest get an img2img pass at denoise 0.382 with tiled VAE.

Super-resolution runs in tiles with an overlap; each tile's output is weighted by a ramp that falls
to zero towards the tile's inner edges, so seams blend and any image fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fooocusd.engine.fetch import fetch_suggestion
from fooocusd.engine.img2img import shape_ceil, size_for_ceil
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.errors import InvalidInput, ModelNotFound

UPSCALE_FACTORS = {"upscale_1.5x": 1.5, "upscale_2x": 2.0, "upscale_fast_2x": 2.0}
UPSCALE_STRENGTH = 0.382
MIN_DIFFUSION_CEIL = 1024
MAX_DIFFUSION_CEIL = 2800
MAX_DIFFUSION_SIDE = 4096
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 32
_SAFE_SUFFIXES = (".safetensors",)
_PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class UpscalePlan:
    """What an upscale job produces: the final size, and whether (and at what size) it is diffused."""

    target: tuple[int, int]
    diffuse: bool

    @property
    def diffusion_size(self) -> tuple[int, int]:
        """The target rounded down to multiples of 8 (the latent grid); the result is resized back."""
        width, height = self.target
        return max(64, width // 8 * 8), max(64, height // 8 * 8)


def plan_upscale(width: int, height: int, factor: float, *, fast: bool) -> UpscalePlan:
    """The size plan for upscaling a ``width``×``height`` image by ``factor`` (see module doc)."""
    target = (max(1, round(width * factor)), max(1, round(height * factor)))
    if fast:
        return UpscalePlan(target, diffuse=False)
    if shape_ceil(*target) < MIN_DIFFUSION_CEIL:
        target = size_for_ceil(*target, MIN_DIFFUSION_CEIL)
    too_big = shape_ceil(*target) > MAX_DIFFUSION_CEIL or max(target) > MAX_DIFFUSION_SIDE
    return UpscalePlan(target, diffuse=not too_big)


def find_upscaler(model_dirs: ModelDirs, name: str) -> Path:
    """The upscale model file called ``name``; a missing one is an ``InvalidInput`` naming the folders."""
    try:
        return model_dirs.find("upscale_models", name)
    except ModelNotFound as exc:
        raise InvalidInput(
            f"the upscale model {name!r} was not found ({exc.where})",
            where="upscale_model",
            hint=f"{exc.hint}{fetch_suggestion(name)}, or name another file with 'upscale_model' (job) or "
            "generation.upscale_model (config)",
        ) from exc


def load_upscaler(path: Path, *, allow_pickle: bool = False) -> Any:
    """Load a super-resolution model with spandrel. Pickled files run code, so only safetensors by default."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES and not allow_pickle:
        raise InvalidInput(
            f"the upscale model {path.name} is a pickle file ({suffix}), which can run code when loaded",
            where=str(path),
            hint="use a .safetensors version of the model (most are published as one, or convert it), "
            "or set engine.allow_unsafe_pickle = true if you trust the file",
        )
    if suffix not in _SAFE_SUFFIXES + _PICKLE_SUFFIXES:
        raise InvalidInput(
            f"the upscale model {path.name} is not a model file (.safetensors)",
            where=str(path),
            hint="use an ESRGAN-family super-resolution model saved as .safetensors",
        )
    try:
        descriptor = ModelLoader(device="cpu").load_from_file(path)
    except UnsupportedModelError as exc:
        raise InvalidInput(
            f"{path.name} is not a super-resolution model spandrel recognises",
            where=str(path),
            hint="use an ESRGAN-family model such as RealESRGAN_x4plus or 4x-UltraSharp",
        ) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InvalidInput(
            f"could not read the upscale model {path.name}: {exc}",
            where=str(path),
            hint="the file may be incomplete; download it again",
        ) from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3:
        raise InvalidInput(
            f"{path.name} is not an RGB image-to-image model", where=str(path), hint="use an RGB SR model"
        )
    return descriptor.eval()


def super_resolve(
    model: Any,
    image: Image.Image,
    *,
    device: torch.device | str = "cpu",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> Image.Image:
    """``image`` enlarged by ``model.scale``, processed in ``tile``-pixel tiles overlapping by ``overlap``."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    scale = int(model.scale)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    pixels = pixels.permute(2, 0, 1)[None]
    _, _, height, width = pixels.shape
    output = torch.zeros(1, 3, height * scale, width * scale)
    weights = torch.zeros(1, 1, height * scale, width * scale)
    model.to(device)
    try:
        for top in _tile_starts(height, tile, overlap):
            for left in _tile_starts(width, tile, overlap):
                bottom, right = min(top + tile, height), min(left + tile, width)
                piece = pixels[:, :, top:bottom, left:right].to(device)
                with torch.inference_mode():
                    result = model(piece).float().cpu()
                ramp = _ramp(
                    (bottom - top) * scale,
                    (right - left) * scale,
                    overlap * scale,
                    edges=(top > 0, bottom < height, left > 0, right < width),
                )
                output[:, :, top * scale : bottom * scale, left * scale : right * scale] += result * ramp
                weights[:, :, top * scale : bottom * scale, left * scale : right * scale] += ramp
    finally:
        model.to("cpu")
    blended = (output / weights.clamp_min(1e-8)).clamp(0.0, 1.0)
    array = (blended[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(height: int, width: int, overlap: int, *, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """Weights rising linearly over ``overlap`` pixels at each side that meets another tile."""
    top, bottom, left, right = edges

    def axis(length: int, start: bool, end: bool) -> torch.Tensor:
        weights = torch.ones(length)
        span = min(overlap, length // 2)
        if span > 0:
            rise = (torch.arange(span, dtype=torch.float32) + 0.5) / span
            if start:
                weights[:span] = torch.minimum(weights[:span], rise)
            if end:
                weights[-span:] = torch.minimum(weights[-span:], rise.flip(0))
        return weights

    return (axis(height, top, bottom)[:, None] * axis(width, left, right)[None, :])[None, None]


def resize_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
