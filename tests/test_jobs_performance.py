"""Performance modes: Fooocus's step table, upscale/vary steps, and what the fast modes force."""

from __future__ import annotations

import pytest

from fooocusd.jobs.performance import (
    FAST_MODE_SETTINGS,
    PERFORMANCE_MODES,
    PERFORMANCE_STEPS,
    fetch_name,
    forced_settings,
    performance_lora,
    uov_steps,
)
from fooocusd.jobs.presets import Preset
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec, LoraSpec
from fooocusd.settings import GenerationSettings

DEFAULTS = GenerationSettings()


def resolve_one(spec: JobSpec, preset: Preset | None = None):
    return resolve_requests(spec, preset, DEFAULTS, "configured.safetensors")[0]


def test_step_table_matches_fooocus() -> None:
    assert PERFORMANCE_STEPS == {
        "quality": 60,
        "speed": 30,
        "extreme_speed": 8,
        "lightning": 4,
        "hyper_sd": 4,
    }


@pytest.mark.parametrize(
    ("mode", "steps"),
    [("quality", 36), ("speed", 18), ("extreme_speed", 8), ("lightning", 4), ("hyper_sd", 4)],
)
def test_upscale_and_vary_steps_follow_fooocus_uov_table(mode: str, steps: int) -> None:
    assert uov_steps(mode) == steps


@pytest.mark.parametrize(
    ("mode", "lora", "sampler", "scheduler"),
    [
        ("extreme_speed", ("sdxl_lcm_lora.safetensors", 1.0), "lcm", "lcm"),
        ("lightning", ("sdxl_lightning_4step_lora.safetensors", 1.0), "euler", "sgm_uniform"),
        ("hyper_sd", ("sdxl_hyper_sd_4step_lora.safetensors", 0.8), "dpmpp_sde_gpu", "karras"),
    ],
)
def test_fast_mode_forces_its_lora_sampler_and_guidance_over_job_and_preset(
    mode: str, lora: tuple[str, float], sampler: str, scheduler: str
) -> None:
    preset = Preset(name="p", cfg=9.0, sharpness=10.0, sampler="heun", refiner="r.safetensors")
    spec = JobSpec(
        prompt="a fox",
        seed=1,
        performance=mode,
        cfg=7.0,
        sharpness=5.0,
        adaptive_cfg=9.0,
        scheduler="normal",
        adm_scaler_positive=2.0,
        refiner_switch=0.5,
        loras=[LoraSpec(name="mine.safetensors", weight=0.7)],
    )
    request = resolve_one(spec, preset)
    assert (request.sampler, request.scheduler) == (sampler, scheduler)
    assert (request.cfg, request.sharpness, request.adaptive_cfg) == (1.0, 0.0, 1.0)
    assert (request.adm_scaler_positive, request.adm_scaler_negative, request.adm_scaler_end) == (
        1.0,
        1.0,
        0.0,
    )
    assert (request.refiner, request.refiner_switch) == ("", 1.0)
    assert request.loras == (lora, ("mine.safetensors", 0.7))
    assert request.performance == mode
    assert request.steps == PERFORMANCE_STEPS[mode]


@pytest.mark.parametrize("mode", ["quality", "speed"])
def test_quality_and_speed_force_nothing(mode: str) -> None:
    assert forced_settings(mode) == {} and performance_lora(mode) is None
    request = resolve_one(JobSpec(prompt="a fox", seed=1, performance=mode, cfg=7.0, sampler="heun"))
    assert (request.cfg, request.sampler, request.loras, request.sharpness) == (7.0, "heun", (), 2.0)


def test_forced_settings_say_what_a_fast_mode_overrode_for_metadata() -> None:
    forced = forced_settings("lightning")
    assert forced == {"sampler": "euler", "scheduler": "sgm_uniform", **FAST_MODE_SETTINGS}
    assert set(FAST_MODE_SETTINGS) == {
        "sharpness",
        "cfg",
        "adaptive_cfg",
        "refiner",
        "refiner_switch",
        "adm_scaler_positive",
        "adm_scaler_negative",
        "adm_scaler_end",
    }


def test_a_preset_fast_mode_forces_too_unless_the_job_picks_another_mode() -> None:
    preset = Preset(name="p", performance="lightning")
    assert resolve_one(JobSpec(prompt="x", seed=1, cfg=6.0), preset).cfg == 1.0
    request = resolve_one(JobSpec(prompt="x", seed=1, cfg=6.0, performance="speed"), preset)
    assert (request.cfg, request.steps, request.loras) == (6.0, 30, ())


def test_every_mode_has_a_label_and_fetch_names_drop_the_suffix() -> None:
    assert [mode.label for mode in PERFORMANCE_MODES.values()] == [
        "Quality",
        "Speed",
        "Extreme Speed",
        "Lightning",
        "Hyper-SD",
    ]
    assert fetch_name("sdxl_lcm_lora.safetensors") == "sdxl_lcm_lora"
    assert fetch_name("sd_xl_offset_example-lora_1.0") == "sd_xl_offset_example-lora_1.0"
