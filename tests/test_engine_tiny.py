"""SDXLEngine on tiny-random: deterministic pixels, progress, stopping, and request checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.factory import create_engine
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.tiny import tiny_render_size
from fooocusd.errors import Interrupted, InvalidInput, ModelNotFound
from fooocusd.settings import EngineSettings
from tests.engine_helpers import default_request


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    root = tmp_path_factory.mktemp("engine")
    built = create_engine(EngineSettings(model="tiny-random", device="cpu"), root / "models", root / "cache")
    assert isinstance(built, SDXLEngine)
    built.load()
    return built


def _pixels(engine: SDXLEngine, request: GenerationRequest) -> np.ndarray:
    return np.asarray(engine.generate(request).image)


def test_default_job_renders_deterministically_with_progress_for_every_step(engine: SDXLEngine) -> None:
    reported: list[tuple[int, int]] = []
    first = engine.generate(default_request(), progress=lambda done, total: reported.append((done, total)))
    assert reported == [(step, 30) for step in range(1, 31)]
    again = engine.generate(default_request())
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    pixels = np.asarray(first.image)
    assert pixels.std() > 1.0  # noise, not a blank image


def test_different_seed_gives_different_pixels(engine: SDXLEngine) -> None:
    one = _pixels(engine, default_request(steps=3, seed=1))
    two = _pixels(engine, default_request(steps=3, seed=2))
    assert one.shape == two.shape and not np.array_equal(one, two)


def test_prompt_and_extra_prompts_change_the_image(engine: SDXLEngine) -> None:
    base = _pixels(engine, default_request(steps=3))
    other_prompt = _pixels(engine, default_request(steps=3, prompt="a red bicycle"))
    with_extra = _pixels(engine, default_request(steps=3, extra_prompts=("golden hour",)))
    assert not np.array_equal(base, other_prompt)
    assert not np.array_equal(base, with_extra)


def test_tiny_random_renders_a_reduced_size_and_reports_it(engine: SDXLEngine) -> None:
    result = engine.generate(default_request(steps=2))
    assert (result.width, result.height) == result.image.size == (144, 112)
    assert result.extra["requested_size"] == [1152, 896] and result.extra["reduced_size"] is True
    assert tiny_render_size(1024, 1024) == (128, 128)
    assert tiny_render_size(64, 64) == (64, 64)


def test_result_records_model_device_scheduler_and_stage_timings(engine: SDXLEngine) -> None:
    engine.generate(default_request(steps=1))  # the shared engine's first image carries "load"
    result = engine.generate(default_request(steps=2))
    assert result.model_name == "tiny-random"
    assert (result.device, result.dtype) == ("cpu", "float32")
    assert result.extra["scheduler_class"] == "DPMSolverMultistepScheduler"
    assert result.extra["sampler"] == "dpmpp_2m_sde_gpu" and result.extra["scheduler"] == "karras"
    assert {"encode", "denoise", "decode", "total"} <= set(result.timings)
    assert "load" not in result.timings  # reported once, with the first image after loading
    assert result.timings["total"] >= result.timings["denoise"] > 0


def test_load_time_is_reported_with_the_first_image_only(tmp_path: Path) -> None:
    engine = create_engine(EngineSettings(model="tiny-random", device="cpu"), tmp_path, tmp_path)
    first = engine.generate(default_request(steps=1))  # loads on demand
    second = engine.generate(default_request(steps=1))
    assert first.timings["load"] > 0 and "load" not in second.timings


def test_should_stop_interrupts_between_steps(engine: SDXLEngine) -> None:
    reported: list[int] = []

    def stop_after_two() -> bool:
        return len(reported) >= 2

    with pytest.raises(Interrupted) as caught:
        engine.generate(
            default_request(steps=10),
            progress=lambda done, _total: reported.append(done),
            should_stop=stop_after_two,
        )
    assert reported == [1, 2]
    assert "step 2 of 10" in caught.value.message


def test_should_stop_before_starting_renders_nothing(engine: SDXLEngine) -> None:
    reported: list[int] = []
    with pytest.raises(Interrupted):
        engine.generate(
            default_request(), progress=lambda done, _total: reported.append(done), should_stop=lambda: True
        )
    assert reported == []


def test_engine_still_works_after_an_interruption(engine: SDXLEngine) -> None:
    with pytest.raises(Interrupted):
        engine.generate(default_request(steps=3), should_stop=lambda: True)
    assert engine.generate(default_request(steps=1)).image.size == (144, 112)


@pytest.mark.parametrize(
    ("override", "field"),
    [({"width": 1001}, "width"), ({"height": 30}, "height"), ({"steps": 0}, "steps"), ({"cfg": 0.5}, "cfg")],
)
def test_unusable_request_values_are_invalid_input(
    engine: SDXLEngine, override: dict[str, int], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(**override))
    assert caught.value.where == field and caught.value.hint


def test_unknown_sampler_in_a_job_is_invalid_input(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput, match="unknown sampler"):
        engine.generate(default_request(sampler="warp_drive"))


def test_a_missing_model_a_job_names_is_explained_as_the_jobs_not_the_configurations(
    engine: SDXLEngine,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(model="juggernautXL_v8Rundiffusion"))
    explained = " ".join(caught.value.explain().split())
    assert "the model 'juggernautXL_v8Rundiffusion' was not found" in explained
    assert "Where: model = 'juggernautXL_v8Rundiffusion' (looked for" in explained
    assert "engine.model =" not in explained and "[engine] model" not in explained
    assert "run fooocusd models fetch juggernautXL_v8Rundiffusion" in explained  # it is in the catalogue
    assert "or leave model out of the job (and its preset), or write 'model: default', to use" in explained


def test_job_naming_a_missing_model_is_invalid_input_not_a_crash(engine: SDXLEngine) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.generate(default_request(model="nonexistent_model"))
    assert "nonexistent_model" in caught.value.message
    assert engine.generate(default_request(steps=1)).model_name == "tiny-random"


def test_cfg_one_skips_the_negative_branch_and_still_renders(engine: SDXLEngine) -> None:
    with_negative = _pixels(engine, default_request(steps=2, cfg=1.0, negative="ugly"))
    without_negative = _pixels(engine, default_request(steps=2, cfg=1.0, negative=""))
    assert np.array_equal(with_negative, without_negative)


def test_describe_reports_model_and_device(engine: SDXLEngine) -> None:
    facts = engine.describe()
    assert facts["model"] == "tiny-random" and facts["loaded"] is True
    assert facts["device"] == "cpu" and facts["dtype"] == "float32"
    engine.free_memory()  # safe on CPU


def test_create_engine_with_no_model_configured_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        create_engine(EngineSettings(), tmp_path / "models", tmp_path / "cache")
    assert str(tmp_path / "models") in caught.value.hint
