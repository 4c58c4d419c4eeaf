"""Vary (img2img) on tiny-random: sizes, the partial schedule, determinism, and that the image matters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fooocusd.engine.base import ImageTask
from fooocusd.engine.factory import create_engine
from fooocusd.engine.image_actions import ImageActionContext, ImageJob, run_image_action, steps_for
from fooocusd.engine.img2img import shape_ceil, strength_schedule, vary_size
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.sdxl import SDXLEngine
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


def test_shape_ceil_rounds_the_geometric_mean_up_to_64() -> None:
    assert shape_ceil(1024, 1024) == 1024
    assert shape_ceil(1000, 1000) == 1024
    assert shape_ceil(1025, 1025) == 1088


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((256, 256), (1024, 1024)),  # small images grow to ceil 1024
        ((512, 256), (1472, 704)),  # 2:1 keeps its shape, sides in multiples of 64
        ((1024, 1024), (1024, 1024)),
        ((4000, 4000), (2048, 2048)),  # large images shrink to ceil 2048
    ],
)
def test_vary_size_clamps_the_shape_ceil_between_1024_and_2048(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert vary_size(*size) == expected
    assert all(side % 64 == 0 for side in expected)


def test_strength_runs_the_last_steps_of_a_longer_schedule() -> None:
    assert strength_schedule(30, 1.0) == (30, 0)
    assert strength_schedule(30, 0.5) == (60, 30)
    assert strength_schedule(18, 0.382) == (47, 29)
    scheduled, start = strength_schedule(30, 0.001)
    assert scheduled == 1000 and start == 970  # capped at the training schedule


def test_upscale_uses_the_performance_upscale_steps_unless_steps_were_given() -> None:
    assert steps_for("upscale_2x", "speed", 30, steps_given=False) == 18
    assert steps_for("upscale_2x", "quality", 60, steps_given=False) == 36
    assert steps_for("upscale_2x", "speed", 12, steps_given=True) == 12
    assert steps_for("vary_subtle", "speed", 30, steps_given=False) == 30


def test_vary_runs_exactly_the_requested_steps_and_is_deterministic(engine: SDXLEngine) -> None:
    job = ImageJob("vary_subtle", drawn_scene((256, 256)))
    context = ImageActionContext(ModelDirs.of(Path("/nonexistent")))
    request = default_request(steps=4)
    reported: list[tuple[int, int]] = []
    first = run_image_action(engine, request, job, context, progress=lambda d, t: reported.append((d, t)))
    again = run_image_action(engine, request, job, context)
    assert reported == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert first.image.size == (1024, 1024)  # the vary size, scaled back up from tiny-random's render
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.extra["image_action"] == {"action": "vary_subtle", "denoise": 0.5}


def test_a_low_strength_keeps_the_image_and_a_high_one_departs_from_it(engine: SDXLEngine) -> None:
    source = drawn_scene((128, 128))
    request = default_request(steps=3, width=128, height=128, cfg=1.0)

    def distance(strength: float) -> float:
        task = ImageTask("vary", source, strength)
        result = engine.generate(dataclasses.replace(request, image_task=task))
        result_pixels = np.asarray(result.image.resize((128, 128)), dtype=np.float32)
        return float(np.abs(result_pixels - np.asarray(source, dtype=np.float32)).mean())

    assert distance(0.05) < distance(1.0)


def test_the_input_image_changes_the_result(engine: SDXLEngine) -> None:
    request = default_request(steps=3, width=128, height=128)
    red = Image.new("RGB", (128, 128), (220, 30, 30))
    blue = Image.new("RGB", (128, 128), (30, 30, 220))
    one = engine.generate(dataclasses.replace(request, image_task=ImageTask("vary", red, 0.5)))
    two = engine.generate(dataclasses.replace(request, image_task=ImageTask("vary", blue, 0.5)))
    assert not np.array_equal(np.asarray(one.image), np.asarray(two.image))
