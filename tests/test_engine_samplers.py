"""Fooocus sampler/scheduler names → diffusers schedulers."""

from __future__ import annotations

import json

import pytest
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.samplers import build_scheduler, sampler_names, schedule_names
from fooocusd.errors import InvalidInput


@pytest.fixture(scope="module")
def base_config() -> dict[str, object]:
    return json.loads((SDXL_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde_gpu", "dpmpp_2m_sde"])
def test_fooocus_default_sampler_is_sde_dpmsolver_with_karras_sigmas(
    sampler: str, base_config: dict[str, object]
) -> None:
    choice = build_scheduler(sampler, "karras", base_config)
    assert isinstance(choice.scheduler, DPMSolverMultistepScheduler)
    assert choice.scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert choice.scheduler.config.use_karras_sigmas is True
    choice.scheduler.set_timesteps(30)
    sigmas = choice.scheduler.sigmas
    assert sigmas[0] > 10 and sigmas[-2] < 0.1  # SDXL's sigma range, from the model's own betas


def test_model_noise_schedule_is_kept_and_base_config_untouched(base_config: dict[str, object]) -> None:
    before = dict(base_config)
    choice = build_scheduler("dpmpp_2m", "normal", base_config)
    assert base_config == before
    assert choice.scheduler.config.beta_end == base_config["beta_end"]
    assert choice.scheduler.config.algorithm_type == "dpmsolver++"
    assert choice.scheduler.config.timestep_spacing == "linspace"
    assert choice.scheduler.config.use_karras_sigmas is False


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("euler", "karras", EulerDiscreteScheduler),
        ("euler_a", "normal", EulerAncestralDiscreteScheduler),
        ("euler_ancestral", "sgm_uniform", EulerAncestralDiscreteScheduler),
        ("ddim", "normal", DDIMScheduler),
        ("dpmpp_2m", "exponential", DPMSolverMultistepScheduler),
        ("dpmpp_2m_sde_gpu", "simple", DPMSolverMultistepScheduler),
    ],
)
def test_each_supported_pair_builds_a_working_scheduler(
    sampler: str, schedule: str, expected: type, base_config: dict[str, object]
) -> None:
    choice = build_scheduler(sampler, schedule, base_config)
    assert type(choice.scheduler) is expected
    choice.scheduler.set_timesteps(8)
    assert len(choice.scheduler.timesteps) >= 8


def test_ddim_on_karras_sigmas_runs_as_the_equivalent_euler_update(base_config: dict[str, object]) -> None:
    choice = build_scheduler("ddim", "karras", base_config)
    assert isinstance(choice.scheduler, EulerDiscreteScheduler)
    assert choice.scheduler.config.use_karras_sigmas is True


def test_sgm_uniform_uses_trailing_timesteps(base_config: dict[str, object]) -> None:
    choice = build_scheduler("euler", "sgm_uniform", base_config)
    choice.scheduler.set_timesteps(4)
    assert int(choice.scheduler.timesteps[0]) == 999


def test_unknown_sampler_is_invalid_input_listing_valid_names(base_config: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_scheduler("dpmpp_9m_turbo", "karras", base_config)
    assert "dpmpp_9m_turbo" in caught.value.message
    for name in ("dpmpp_2m_sde_gpu", "euler", "euler_ancestral", "ddim", "dpmpp_2m"):
        assert name in caught.value.hint
    assert set(sampler_names()) >= {"dpmpp_2m_sde_gpu", "euler_a"}


def test_unknown_scheduler_is_invalid_input_listing_valid_names(base_config: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_scheduler("euler", "wobbly", base_config)
    assert all(name in caught.value.hint for name in schedule_names())
    assert {"karras", "normal", "exponential", "sgm_uniform", "simple"} <= set(schedule_names())


def test_pair_diffusers_cannot_run_names_the_schedules_that_work(base_config: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_scheduler("euler_ancestral", "karras", base_config)
    assert "karras" in caught.value.message
    assert "normal" in caught.value.hint and "karras" not in caught.value.hint


def test_names_are_matched_case_insensitively(base_config: dict[str, object]) -> None:
    choice = build_scheduler(" DPMPP_2M_SDE_GPU ", "Karras", base_config)
    assert choice.sampler == "dpmpp_2m_sde_gpu" and choice.schedule == "karras"
