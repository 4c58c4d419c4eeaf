"""The refiner switch inside one sampling run, on the tiny SDXL and a tiny refiner-shaped UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from fooocusd.engine.factory import create_engine
from fooocusd.engine.models import TINY_REFINER
from fooocusd.engine.refiner import REFINER_CONFIG_DIR, _is_refiner_shaped, switch_call
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import InvalidInput
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    root = tmp_path_factory.mktemp("refiner")
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), root / "models", root / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    return built


def _pixels(engine: SDXLEngine, **overrides: object) -> np.ndarray:
    return np.asarray(engine.generate(default_request(steps=4, **overrides)).image)


def test_refiner_at_half_the_steps_changes_the_image(engine: SDXLEngine) -> None:
    plain = _pixels(engine)
    refined = _pixels(engine, refiner=TINY_REFINER, refiner_switch=0.5)
    assert not np.array_equal(plain, refined)


def test_switch_one_or_refiner_none_or_the_base_itself_equals_no_refiner(engine: SDXLEngine) -> None:
    plain = _pixels(engine)
    assert np.array_equal(plain, _pixels(engine, refiner=TINY_REFINER, refiner_switch=1.0))
    assert np.array_equal(plain, _pixels(engine, refiner="none", refiner_switch=0.5))
    assert np.array_equal(plain, _pixels(engine, refiner="tiny-random", refiner_switch=0.5))


def test_one_scheduler_run_reports_every_step_once_across_the_switch(engine: SDXLEngine) -> None:
    reported: list[tuple[int, int]] = []
    result = engine.generate(
        default_request(steps=6, refiner=TINY_REFINER, refiner_switch=0.5),
        progress=lambda done, total: reported.append((done, total)),
    )
    assert reported == [(step, 6) for step in range(1, 7)]
    assert result.extra["refiner"]["name"] == TINY_REFINER
    assert result.extra["refiner"]["switch_step"] == 3 and result.extra["refiner_switch"] == 0.5


def test_the_refiner_stays_loaded_between_jobs(engine: SDXLEngine) -> None:
    engine.generate(default_request(steps=2, refiner=TINY_REFINER, refiner_switch=0.5))
    loads = engine._components.refiners.loads
    base_unet = engine._pipeline.unet if engine._pipeline is not None else None
    first = _pixels(engine, refiner=TINY_REFINER, refiner_switch=0.5)
    again = _pixels(engine, refiner=TINY_REFINER, refiner_switch=0.5)
    assert engine._components.refiners.loads == loads
    assert engine._pipeline is not None and engine._pipeline.unet is base_unet
    assert np.array_equal(first, again)


def test_a_missing_refiner_is_refused_with_where_it_was_looked_for(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(steps=2, refiner="no_such_refiner", refiner_switch=0.5))
    assert "no_such_refiner" in caught.value.message and caught.value.hint
    assert caught.value.where.startswith("refiner = 'no_such_refiner' (looked for")
    assert "engine.model" not in caught.value.explain(), "the refiner is not the configured model"


def test_switch_step_scales_to_the_schedulers_model_calls() -> None:
    assert switch_call(30, 30, 0.8) == 24  # one call per step
    assert switch_call(59, 30, 0.5) == 30  # a second-order scheduler: about two calls per step
    assert switch_call(4, 4, 1.0) == 4


def test_shipped_refiner_config_is_refiner_shaped() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(REFINER_CONFIG_DIR / "unet"))
    assert _is_refiner_shaped(unet) and unet.config.cross_attention_dim == 1280
    parameters = sum(parameter.numel() for parameter in unet.parameters())
    assert 2.2e9 < parameters < 2.4e9  # the published SDXL refiner UNet has about 2.3 B parameters
