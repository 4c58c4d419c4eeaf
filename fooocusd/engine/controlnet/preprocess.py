"""Control-image preprocessors: pure image → image functions (plus the depth estimator's wrapper).

- ``fit_to_size``: resize to cover the render size, then centre-crop (Fooocus's default resize mode).
- ``pyracanny``: Canny edges per colour channel at nine scales (0.2 … 1.0), blended coarse to fine,
  summed over channels and stretched between the 1st and 99th percentile. Coarse scales find the
  outlines of large shapes, fine ones the detail, so the map is both complete and clean.
- ``cpds``: contrast-preserving decolourised structure. A slightly blurred image is decolourised
  with ``cv2.decolor`` (which keeps colour contrast as grey contrast); the map is that grey image
  plus the distance between each pixel's colour and its colour-boosted version, stretched between
  the 4th and 96th percentile. Unlike plain greyscale it keeps edges between equally bright colours.
- ``DepthEstimator``: a transformers depth model (DPT, Depth Anything …) read from a local folder;
  near is bright, as depth ControlNets expect.

Every map is returned as an RGB image of the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from fooocusd.errors import InvalidInput

CANNY_LOW = 64
CANNY_HIGH = 128
PYRAMID_SCALES = tuple(round(0.2 + 0.1 * step, 1) for step in range(9))
_PYRAMID_KEEP = 0.75  # weight of the coarser accumulated map at each finer scale
CPDS_BLUR_SIGMA = 0.8


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``image`` so that it covers ``width`` × ``height``, then crop the middle."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    scaled_w, scaled_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resample = Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.BOX
    resized = image.resize((scaled_w, scaled_h), resample) if (scaled_w, scaled_h) != image.size else image
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def pyracanny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """Multi-scale ("pyramid") colour Canny edge map of ``image``."""
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    accumulated: np.ndarray | None = None
    for scale in PYRAMID_SCALES:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        level = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA) if scale < 1 else pixels
        edges = np.stack([cv2.Canny(np.ascontiguousarray(level[..., c]), low, high) for c in range(3)], -1)
        edges = edges.astype(np.float32)
        if accumulated is None:
            accumulated = edges
        else:
            coarser = cv2.resize(accumulated, size, interpolation=cv2.INTER_LINEAR)
            accumulated = _PYRAMID_KEEP * coarser + (1.0 - _PYRAMID_KEEP) * edges
    assert accumulated is not None
    return _grey_map(_stretch(accumulated.sum(axis=-1), 1.0, 99.0))


def cpds(image: Image.Image) -> Image.Image:
    """Contrast-preserving decolourised structure map of ``image``."""
    pixels = np.asarray(image.convert("RGB"))
    blurred = cv2.GaussianBlur(pixels, (0, 0), CPDS_BLUR_SIGMA)
    bgr = np.ascontiguousarray(blurred[..., ::-1])
    grey, boosted_bgr = cv2.decolor(bgr)
    raw = bgr.astype(np.float32)
    colour_shift = np.linalg.norm(raw - boosted_bgr.astype(np.float32), axis=-1)
    structure = grey.astype(np.float32) + colour_shift
    return _grey_map(_stretch(structure, 4.0, 96.0))


def _stretch(values: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Map the ``low``–``high`` percentile range to 0–1 (clipped); falls back to the full range."""
    low = float(np.percentile(values, low_percentile))
    high = float(np.percentile(values, high_percentile))
    if high - low < 1e-6:  # sparse maps: most pixels share one value
        low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _grey_map(unit: np.ndarray) -> Image.Image:
    grey = (unit * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")


class DepthEstimator:
    """A transformers depth-estimation model read from ``folder`` (``config.json``, weights, processor)."""

    def __init__(self, folder: Path, *, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.folder = folder
        self.device = device
        try:
            self._processor: Any = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(
                f"could not load the depth estimator in {folder}: {type(exc).__name__}: {exc}",
                where=str(folder),
                hint="it must be a complete transformers depth model folder (config.json, "
                "preprocessor_config.json and the weights), e.g. Depth Anything V2 Small "
                "(depth-anything/Depth-Anything-V2-Small-hf) or DPT-hybrid (Intel/dpt-hybrid-midas)",
            ) from exc
        # Small models lose little in half precision, but fp32 keeps the map smooth; they are cheap.
        self._model = model.to(device=device, dtype=torch.float32 if dtype == torch.float32 else dtype).eval()

    @torch.inference_mode()
    def __call__(self, image: Image.Image) -> Image.Image:
        """Relative depth of ``image`` (near = white), at ``image``'s size."""
        inputs = self._processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=self.device, dtype=self._model.dtype)
        depth = self._model(pixel_values=pixel_values).predicted_depth
        depth = torch.nn.functional.interpolate(
            depth.unsqueeze(1).float(), size=(image.height, image.width), mode="bicubic", align_corners=False
        )[0, 0]
        low, high = depth.min(), depth.max()
        unit = (depth - low) / (high - low) if float(high - low) > 1e-6 else torch.zeros_like(depth)
        return _grey_map(unit.clamp(0, 1).cpu().numpy())
