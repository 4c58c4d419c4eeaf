"""Face crops for ``face`` image prompts: the similarity-transform maths, the crop, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fooocusd.engine.ip_adapter.face_align import (
    align_face,
    apply_transform,
    similarity_transform,
    template_points,
)
from fooocusd.engine.ip_adapter.face_detect import Face, YuNetDetector, crop_face
from fooocusd.engine.ip_adapter.files import FACE_DETECTOR_FILE, face_detector_file
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.errors import InvalidInput


def _similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    angle = math.radians(degrees)
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def _invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, (-linear @ matrix[:, 2])[:, None]])


@pytest.mark.parametrize(
    ("scale", "degrees", "shift"), [(0.4, 30.0, (310.0, 95.0)), (2.5, -75.0, (-40.0, 12.0))]
)
def test_the_transform_from_exact_landmarks_undoes_the_pose(
    scale: float, degrees: float, shift: tuple[float, float]
) -> None:
    target = template_points(512, 0.25)
    pose = _similarity(scale, degrees, shift)
    detected = apply_transform(pose, target)  # the canonical face, scaled, rotated and moved
    estimated = similarity_transform(detected, target)
    assert np.allclose(estimated, _invert(pose), atol=1e-9)
    assert np.allclose(apply_transform(estimated, detected), target, atol=1e-9)


def test_noisy_landmarks_get_the_least_squares_fit() -> None:
    target = template_points(512, 0.25)
    pose = _similarity(0.8, 12.0, (100.0, 50.0))
    noisy = apply_transform(pose, target) + np.random.default_rng(0).normal(0.0, 3.0, (5, 2))
    fitted = similarity_transform(noisy, target)

    def residual(matrix: np.ndarray) -> float:
        return float(((apply_transform(matrix, noisy) - target) ** 2).sum())

    best = residual(fitted)
    assert best <= residual(_invert(pose))
    for nudge in np.eye(6).reshape(6, 2, 3) * 1e-3:  # every small change of the parameters fits worse
        a, b = fitted[0, 0] + nudge[0, 0], fitted[1, 0] + nudge[1, 0]
        moved = np.array([[a, -b, fitted[0, 2] + nudge[0, 2]], [b, a, fitted[1, 2] + nudge[1, 2]]])
        assert residual(moved) >= best


def test_the_transform_never_mirrors_or_shears() -> None:
    target = template_points(512, 0.25)
    mirrored = target * np.array([-1.0, 1.0]) + np.array([600.0, 0.0])
    matrix = similarity_transform(mirrored, target)
    linear = matrix[:, :2]
    assert np.isclose(linear[0, 0], linear[1, 1]) and np.isclose(linear[0, 1], -linear[1, 0])
    assert np.linalg.det(linear) >= 0.0


def test_coincident_landmarks_are_refused() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), template_points())


def test_the_crop_puts_a_tilted_face_upright_with_the_landmarks_on_the_template() -> None:
    target = template_points(256, 0.25)
    pose = _similarity(0.7, -25.0, (180.0, 140.0))
    landmarks = apply_transform(pose, target)
    canvas = Image.new("RGB", (480, 400), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(landmarks, colours, strict=True):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
    crop = np.asarray(align_face(canvas, landmarks, size=256, margin=0.25)).astype(int)
    assert crop.shape == (256, 256, 3)
    for (x, y), colour in zip(target, colours, strict=True):
        distance = np.abs(crop - np.array(colour)).sum(axis=2)
        ys, xs = np.nonzero(distance < 60)
        assert len(xs) > 0
        assert abs(xs.mean() - x) < 1.5 and abs(ys.mean() - y) < 1.5


class _Faces:
    def __init__(self, *faces: Face) -> None:
        self.faces = list(faces)

    def detect(self, image: Image.Image) -> list[Face]:
        return self.faces


def _face(score: float, offset: float) -> Face:
    landmarks = template_points(64, 0.25) + offset
    return Face(box=(offset, offset, 64.0, 64.0), landmarks=landmarks, score=score)


def test_no_face_found_is_refused_with_the_file_name_and_the_alternative() -> None:
    with pytest.raises(InvalidInput) as caught:
        crop_face(Image.new("RGB", (64, 64)), _Faces(), source="ref.png")
    assert caught.value.message == "no face found in ref.png; use type image_prompt instead"
    assert "image_prompt" in caught.value.hint


def test_the_most_confident_face_is_cropped() -> None:
    image = Image.new("RGB", (200, 200))
    crop = crop_face(image, _Faces(_face(0.71, 0.0), _face(0.98, 100.0), _face(0.8, 50.0)), source="two.png")
    assert crop.face.score == 0.98
    assert crop.image.size == (512, 512)
    assert crop.record() == {"face_box": [100.0, 100.0, 64.0, 64.0], "face_score": 0.98}


def test_a_missing_detector_model_names_the_file_the_folder_and_where_to_get_it(tmp_path: Path) -> None:
    dirs = ModelDirs.of(tmp_path / "models")
    with pytest.raises(InvalidInput) as caught:
        face_detector_file(dirs)
    text = caught.value.explain()
    assert FACE_DETECTOR_FILE in text
    assert str(dirs.folders("face_detection")[0]) in text
    assert "github.com/opencv/opencv_zoo" in text


def test_the_detector_model_is_found_in_the_face_detection_folder(tmp_path: Path) -> None:
    dirs = ModelDirs.of(tmp_path / "models")
    folder = dirs.folders("face_detection")[0]
    folder.mkdir(parents=True)
    (folder / FACE_DETECTOR_FILE).write_bytes(b"not an onnx model")
    assert face_detector_file(dirs) == folder / FACE_DETECTOR_FILE
    with pytest.raises(InvalidInput, match="could not load the face detector") as caught:
        YuNetDetector(folder / FACE_DETECTOR_FILE)
    assert "download" in caught.value.hint
