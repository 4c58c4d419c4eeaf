"""Finding the face for ``face`` image prompts: OpenCV's YuNet detector, then an aligned crop.

YuNet (``cv2.FaceDetectorYN``, OpenCV Zoo, MIT licence) is a small ONNX model that reports a box,
five landmarks and a score per face. The user supplies the model file (``face_detection/``); nothing
is downloaded. The most confident face is used, as Fooocus does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from fooocusd.engine.ip_adapter.face_align import align_face
from fooocusd.engine.ip_adapter.files import FACE_DETECTOR_FILE
from fooocusd.errors import InvalidInput

SCORE_THRESHOLD = 0.7
NMS_THRESHOLD = 0.3
MAX_DETECTION_SIDE = 1280
"""Images are searched at most this large (longest side); coordinates are scaled back."""


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]
    """x, y, width, height in pixels of the original image."""
    landmarks: np.ndarray
    """5×2: right eye, left eye, nose tip, right mouth corner, left mouth corner (pixels)."""
    score: float


class FaceDetector(Protocol):
    def detect(self, image: Image.Image) -> list[Face]:
        """Every face found in ``image``, any order."""
        ...


@dataclass(frozen=True)
class FaceCrop:
    image: Image.Image
    face: Face

    def record(self) -> dict[str, object]:
        return {"face_box": [round(v, 1) for v in self.face.box], "face_score": round(self.face.score, 3)}


class YuNetDetector:
    """``cv2.FaceDetectorYN`` over the model file at ``path``."""

    def __init__(self, path: Path) -> None:
        import cv2

        self.path = path
        try:
            self._detector = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), SCORE_THRESHOLD, NMS_THRESHOLD, 50
            )
        except cv2.error as exc:
            raise InvalidInput(
                f"could not load the face detector {path.name}: {exc}",
                where=str(path),
                hint=f"download {FACE_DETECTOR_FILE} again; a partial download is the usual cause",
            ) from exc

    def detect(self, image: Image.Image) -> list[Face]:
        rgb = np.asarray(image.convert("RGB"))
        height, width = rgb.shape[:2]
        factor = min(1.0, MAX_DETECTION_SIDE / max(width, height))
        if factor < 1.0:
            small = image.convert("RGB").resize(
                (max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BILINEAR
            )
            rgb = np.asarray(small)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _count, rows = self._detector.detect(bgr)
        if rows is None:
            return []
        return [_face_from_row(row, 1.0 / factor) for row in rows]


def crop_face(image: Image.Image, detector: FaceDetector, *, source: str) -> FaceCrop:
    """The aligned crop of the most confident face. Raises ``InvalidInput`` when there is none."""
    faces = detector.detect(image)
    if not faces:
        name = source or "the image"
        raise InvalidInput(
            f"no face found in {name}; use type image_prompt instead",
            where=name,
            hint="use a photo where the face is clear, upright-ish and at least about 60 pixels wide, "
            'or set type = "image_prompt" for this image',
        )
    best = max(faces, key=lambda face: face.score)
    return FaceCrop(align_face(image, best.landmarks), best)


def _face_from_row(row: np.ndarray, scale: float) -> Face:
    values = np.asarray(row, dtype=np.float64)
    x, y, width, height = (float(v) * scale for v in values[:4])
    return Face(
        box=(x, y, width, height), landmarks=values[4:14].reshape(5, 2) * scale, score=float(values[14])
    )
