"""Inpaint and outpaint: crop-box maths, canvas extension, and pixels outside the mask kept exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fooocusd.engine.factory import create_engine
from fooocusd.engine.image_actions import ImageActionContext, ImageJob, run_image_action
from fooocusd.engine.inpaint import mask_bounding_box, paste_back, prefill, working_area
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.outpaint import extend_canvas, outpaint_padding
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request
from tests.image_helpers import drawn_scene


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    root = tmp_path_factory.mktemp("engine")
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), root / "models", root / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    return built


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _context() -> ImageActionContext:
    return ImageActionContext(ModelDirs.of(Path("/nonexistent")))


def test_bounding_box_counts_values_from_128_as_repaint() -> None:
    mask = _mask((50, 40), (10, 5, 20, 15))
    mask.putpixel((30, 30), 127)  # below the threshold: kept
    assert mask_bounding_box(mask) == (10, 5, 20, 15)
    assert mask_bounding_box(Image.new("L", (8, 8), 0)) is None


def test_working_area_is_a_grown_square_around_the_mask_inside_the_image() -> None:
    # A 20×20 mask in the middle of 1000×1000 with field 0: 1.15 × 20 = 23 px square, centred.
    assert working_area((490, 490, 510, 510), 1000, 1000, 0.0) == (488, 488, 511, 511)
    # Field 0.618 grows it to cover 61.8% of each side.
    assert working_area((490, 490, 510, 510), 1000, 1000, 0.618) == (191, 191, 809, 809)
    # Near a corner the area is shifted inside the image, still holding the mask.
    assert working_area((0, 0, 20, 20), 1000, 1000, 0.618) == (0, 0, 618, 618)
    # Field 1.0 is the whole image.
    assert working_area((300, 10, 310, 20), 640, 480, 1.0) == (0, 0, 640, 480)


def test_outpaint_padding_uses_fractions_or_pixels_top_and_bottom_first() -> None:
    assert outpaint_padding(200, 100, ("left", "top"), None) == (60, 30, 0, 0)
    assert outpaint_padding(200, 100, ("right", "bottom"), 0.5) == (0, 0, 100, 50)
    assert outpaint_padding(200, 100, ("left", "right", "top", "bottom"), 64) == (64, 64, 64, 64)


def test_extended_canvas_repeats_edges_and_masks_only_the_new_area() -> None:
    image = drawn_scene((40, 20))
    canvas, mask, padding = extend_canvas(image, None, ("right",), 10)
    assert canvas.size == mask.size == (50, 20) and padding == (0, 0, 10, 0)
    pixels, repaint = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(pixels[:, :40], np.asarray(image))
    assert np.array_equal(pixels[:, 45], np.asarray(image)[:, 39])  # edge pixels repeated
    assert (repaint[:, :40] == 0).all() and (repaint[:, 40:] == 255).all()


def test_prefill_keeps_known_pixels_and_fills_the_hole_from_its_surroundings() -> None:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    holed = image.copy()
    holed.paste((0, 0, 0), (20, 20, 40, 40))
    mask = _mask((64, 64), (20, 20, 40, 40))
    filled = np.asarray(prefill(holed, mask), dtype=int)
    known = ~np.asarray(mask, dtype=bool)
    assert np.array_equal(filled[known], np.asarray(holed, dtype=int)[known])
    assert abs(filled[30, 30] - np.array([200, 40, 40])).max() < 30  # the hole took the red around it


def test_paste_back_changes_nothing_outside_the_mask() -> None:
    original = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    mask = _mask((80, 60), (30, 20, 50, 40))
    box = (10, 5, 70, 55)
    result = np.asarray(paste_back(original, Image.new("RGB", (128, 128), "white"), mask, box))
    outside = np.asarray(mask) < 128
    assert np.array_equal(result[outside], np.asarray(original)[outside])
    assert (result[30, 40] == 255).all()  # deep inside: fully the generated pixels


def test_inpaint_keeps_every_pixel_outside_the_mask_byte_for_byte(engine: SDXLEngine) -> None:
    image = drawn_scene((256, 192))
    mask = _mask(image.size, (100, 60, 160, 120))
    job = ImageJob("inpaint", image, mask=mask)
    result = run_image_action(engine, default_request(steps=3), job, _context())
    assert result.image.size == image.size
    pixels, source = np.asarray(result.image), np.asarray(image)
    outside = np.asarray(mask) < 128
    assert np.array_equal(pixels[outside], source[outside])
    assert not np.array_equal(pixels[~outside], source[~outside])
    record = result.extra["image_action"]
    assert record["action"] == "inpaint" and record["denoise"] == 1.0
    left, top, right, bottom = record["working_area"]
    assert left <= 100 and top <= 60 and right >= 160 and bottom >= 120


def test_outpaint_extends_the_chosen_side_and_keeps_the_original(engine: SDXLEngine) -> None:
    image = drawn_scene((128, 96))
    job = ImageJob("outpaint", image, outpaint=("left",), outpaint_distance=32)
    result = run_image_action(engine, default_request(steps=2), job, _context())
    assert result.image.size == (160, 96)
    pixels = np.asarray(result.image)
    assert np.array_equal(pixels[:, 32:], np.asarray(image))
    assert result.extra["image_action"]["outpaint"] == ["left"]
    assert result.extra["image_action"]["outpaint_padding"] == [32, 0, 0, 0]


def test_inpaint_without_a_mask_or_with_a_black_one_is_refused(engine: SDXLEngine) -> None:
    image = drawn_scene((64, 64))
    with pytest.raises(InvalidInput, match="needs a mask"):
        run_image_action(engine, default_request(steps=1), ImageJob("inpaint", image), _context())
    black = Image.new("L", (64, 64), 0)
    with pytest.raises(InvalidInput, match="all black") as caught:
        run_image_action(engine, default_request(steps=1), ImageJob("inpaint", image, mask=black), _context())
    assert "white" in caught.value.hint
