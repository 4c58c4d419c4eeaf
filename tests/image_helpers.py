"""Helpers for image-job tests: a tiny random ESRGAN that spandrel recognises, and simple pictures."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file


def write_tiny_esrgan(path: Path, *, scale: int = 4, seed: int = 7) -> Path:
    """A 1-block, 8-filter RRDBNet (the ESRGAN architecture) with random weights, as .safetensors."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(path))
    return path


def drawn_scene(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A small deterministic picture: sky, sun, hill and a house."""
    width, height = size
    image = Image.new("RGB", size, (135, 180, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.7, height * 0.08, width * 0.9, height * 0.28), fill=(250, 220, 80))
    draw.rectangle((0, height * 0.65, width, height), fill=(70, 140, 60))
    draw.rectangle((width * 0.2, height * 0.45, width * 0.45, height * 0.7), fill=(170, 90, 60))
    draw.polygon(
        [(width * 0.17, height * 0.45), (width * 0.325, height * 0.3), (width * 0.48, height * 0.45)],
        fill=(120, 40, 40),
    )
    return image
