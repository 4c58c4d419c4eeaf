"""Aligned square face crops from five landmarks (eyes, nose tip, mouth corners).

The crop is the least-squares *similarity* transform (uniform scale, rotation, translation; no
shear, no mirror) that carries the detected landmarks onto a canonical upright face. For centred
points p (detected) and q (canonical) and the transform ``M = [[a, -b], [b, a]]``, minimising
``Σ |M·p − q|²`` gives the closed form

    a = Σ (p · q) / Σ |p|²,    b = Σ (p × q) / Σ |p|²,    t = q̄ − M·p̄

with ``p × q = pₓ·q_y − p_y·qₓ``. Scale is √(a² + b²), rotation atan2(b, a).

The canonical face (``FACE_TEMPLATE``) gives the landmarks as fractions of a tight face box, image
convention (x right, y down), in the order detectors such as YuNet report them: the person's right
eye (left in the picture), left eye, nose tip, right and left mouth corner. The crop adds ``margin``
of that box on every side so hair, ears and chin are in the picture, as IP-Adapter face models
expect a head-and-shoulders style crop rather than a tight one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FACE_TEMPLATE = np.array(
    [
        [0.33, 0.42],  # right eye
        [0.67, 0.42],  # left eye
        [0.50, 0.60],  # nose tip
        [0.36, 0.78],  # right mouth corner
        [0.64, 0.78],  # left mouth corner
    ],
    dtype=np.float64,
)
DEFAULT_CROP_SIZE = 512
DEFAULT_MARGIN = 0.25


def template_points(size: int = DEFAULT_CROP_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Where the five landmarks land in a ``size``×``size`` crop with ``margin`` around the face box."""
    return (FACE_TEMPLATE + margin) / (1.0 + 2.0 * margin) * size


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of the least-squares similarity carrying ``source`` points onto ``target`` points."""
    src = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError("need the same number (at least two) of source and target points")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    p, q = src - src_mean, dst - dst_mean
    spread = float((p * p).sum())
    if spread == 0.0:
        raise ValueError("the source points all coincide")
    a = float((p * q).sum()) / spread
    b = float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()) / spread
    rotation_scale = np.array([[a, -b], [b, a]])
    shift = dst_mean - rotation_scale @ src_mean
    return np.hstack([rotation_scale, shift[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (N×2) mapped through a 2×3 affine ``matrix``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def align_face(
    image: Image.Image,
    landmarks: np.ndarray,
    *,
    size: int = DEFAULT_CROP_SIZE,
    margin: float = DEFAULT_MARGIN,
) -> Image.Image:
    """The upright ``size``×``size`` RGB crop of the face whose five ``landmarks`` (pixels) are given.

    Pixels the crop needs from outside the image repeat the nearest edge pixel.
    """
    import cv2

    matrix = similarity_transform(landmarks, template_points(size, margin))
    pixels = np.asarray(image.convert("RGB"))
    warped = cv2.warpAffine(
        pixels, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    return Image.fromarray(warped)
