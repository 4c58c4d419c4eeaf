"""Outpainting: extend the canvas on the chosen sides, and mark the new area for repainting.

Each chosen side grows by ``distance``: a fraction of that dimension when 0 < distance ≤ 1 (Fooocus's
default is 0.3, i.e. 30%), or a number of pixels when distance > 1. Top and bottom are extended first,
then left and right, using the width at that point. New pixels repeat the nearest edge pixel (the
inpaint pre-fill then blurs them); the mask is white there and black over the original image,
unless an inpaint mask was given too, which is kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

OUTPAINT_DIRECTIONS = ("left", "right", "top", "bottom")
DEFAULT_OUTPAINT_DISTANCE = 0.3


def outpaint_padding(
    width: int, height: int, directions: tuple[str, ...], distance: float | None
) -> tuple[int, int, int, int]:
    """Pixels added (left, top, right, bottom) for an image of ``width``×``height``."""
    unknown = set(directions) - set(OUTPAINT_DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown outpaint direction(s): {', '.join(sorted(unknown))}")
    amount = DEFAULT_OUTPAINT_DISTANCE if distance is None else distance
    if amount <= 0:
        raise ValueError(f"outpaint distance must be above 0, got {amount}")

    def grow(side: int) -> int:
        return max(1, round(side * amount)) if amount <= 1.0 else round(amount)

    top = grow(height) if "top" in directions else 0
    bottom = grow(height) if "bottom" in directions else 0
    left = grow(width) if "left" in directions else 0
    right = grow(width) if "right" in directions else 0
    return left, top, right, bottom


def extend_canvas(
    image: Image.Image,
    mask: Image.Image | None,
    directions: tuple[str, ...],
    distance: float | None,
) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """(extended image, its repaint mask, padding (left, top, right, bottom))."""
    left, top, right, bottom = outpaint_padding(image.width, image.height, directions, distance)
    pixels = np.asarray(image.convert("RGB"))
    extended = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    known = np.zeros((image.height, image.width), dtype=np.uint8)
    if mask is not None:
        known = np.asarray(mask.convert("L"), dtype=np.uint8)
    repaint = np.pad(known, ((top, bottom), (left, right)), mode="constant", constant_values=255)
    return Image.fromarray(extended, "RGB"), Image.fromarray(repaint, "L"), (left, top, right, bottom)
