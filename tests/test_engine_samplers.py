"""Fooocus sampler/scheduler names → diffusers schedulers."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from fooocusd.engine.models import SDXL_CONFIG_DIR, resolve_model
from fooocusd.engine.samplers import SAMPLERS, SIGMA_SCHEDULES, build_scheduler, sampler_names, schedule_names
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import InvalidInput
from tests.engine_helpers import default_request


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
        build_scheduler("tcd", "karras", base_config)
    assert "karras" in caught.value.message
    assert "normal" in caught.value.hint and "karras" not in caught.value.hint


def test_ddpm_runs_on_karras_as_the_ancestral_step_its_posterior_equals(
    base_config: dict[str, object],
) -> None:
    on_karras = build_scheduler("ddpm", "karras", base_config)
    assert on_karras.class_name == "SigmaScheduleEulerAncestralScheduler"
    ddpm = DDPMScheduler.from_config({**base_config, "timestep_spacing": "trailing"})
    ancestral = EulerAncestralDiscreteScheduler.from_config({**base_config, "timestep_spacing": "trailing"})
    for scheduler in (ddpm, ancestral):
        scheduler.set_timesteps(5)
    assert torch.equal(ddpm.timesteps, ancestral.timesteps.long())
    generator = torch.Generator().manual_seed(5)
    x_ve = torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) * float(ancestral.sigmas[0])
    for index, timestep in enumerate(ancestral.timesteps):
        sigma, sigma_next = float(ancestral.sigmas[index]), float(ancestral.sigmas[index + 1])
        eps = torch.tanh(x_ve) * 0.5  # any ε model will do
        ancestral_next = ancestral.step(eps, timestep, x_ve, generator=torch.Generator().manual_seed(index))
        x_vp = x_ve / (1 + sigma**2) ** 0.5
        ddpm_next = ddpm.step(eps, int(timestep), x_vp, generator=torch.Generator().manual_seed(index))
        on_sigmas = ddpm_next.prev_sample * (1 + sigma_next**2) ** 0.5
        torch.testing.assert_close(on_sigmas, ancestral_next.prev_sample, rtol=1e-4, atol=1e-4)
        x_ve = ancestral_next.prev_sample


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_euler_ancestral_runs_on_fooocus_sigma_schedules_with_euler_s_sigmas(
    schedule: str, base_config: dict[str, object]
) -> None:
    ancestral = build_scheduler("euler_a", schedule, base_config).scheduler
    euler = build_scheduler("euler", schedule, base_config).scheduler
    for scheduler in (ancestral, euler):
        scheduler.set_timesteps(12)
    assert isinstance(ancestral, EulerAncestralDiscreteScheduler)
    assert np.array_equal(ancestral.sigmas.numpy(), euler.sigmas.numpy())
    assert np.allclose(ancestral.timesteps.numpy(), euler.timesteps.numpy(), atol=1e-3)
    assert float(ancestral.init_noise_sigma) == pytest.approx(float(euler.init_noise_sigma))


def test_euler_ancestral_on_karras_takes_k_diffusions_ancestral_steps(base_config: dict[str, object]) -> None:
    scheduler = build_scheduler("euler_a", "karras", base_config).scheduler
    scheduler.set_timesteps(6)
    sigmas = scheduler.sigmas.double().numpy()

    def eps(x: torch.Tensor, sigma: float) -> torch.Tensor:  # any smooth ε model will do
        return torch.tanh(x) * (sigma / (1.0 + sigma))

    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x, generator = start * scheduler.init_noise_sigma, torch.Generator().manual_seed(9)
    for timestep, sigma in zip(scheduler.timesteps, sigmas[:-1], strict=True):
        model_input = scheduler.scale_model_input(x, timestep)
        x = scheduler.step(eps(model_input, float(sigma)), timestep, x, generator=generator).prev_sample

    reference, generator = start * sigmas[0], torch.Generator().manual_seed(9)
    for sigma, following in itertools.pairwise(sigmas):
        denoised = reference - sigma * eps(reference / (sigma**2 + 1) ** 0.5, float(sigma))
        up = min(following, (following**2 * (sigma**2 - following**2) / sigma**2) ** 0.5)
        down = (following**2 - up**2) ** 0.5
        reference = reference + (reference - denoised) / sigma * (down - sigma)
        noise = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
        reference = reference + noise * up
    assert torch.allclose(x, reference, atol=1e-4)


def test_names_are_matched_case_insensitively(base_config: dict[str, object]) -> None:
    choice = build_scheduler(" DPMPP_2M_SDE_GPU ", "Karras", base_config)
    assert choice.sampler == "dpmpp_2m_sde_gpu" and choice.schedule == "karras"


# -- every name, the schedules' maths, and the samplers Fooocus's fast modes need ---------------------


def _training_sigmas(scheduler: object) -> np.ndarray:
    alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)  # type: ignore[attr-defined]
    return np.sqrt((1.0 - alphas) / alphas)


# KDPM2 takes seconds to construct (it converts its 1000 training sigmas one by one), so the two
# dpm_2 samplers are built on two schedules only; every other pair is built.
_PAIRS = [
    (sampler, schedule)
    for sampler in sorted(SAMPLERS)
    for schedule in sorted(SIGMA_SCHEDULES)
    if not sampler.startswith("dpm_2") or schedule in {"karras", "normal", "lcm"}
]


@pytest.mark.parametrize(("sampler", "schedule"), _PAIRS)
def test_every_sampler_and_schedule_builds_or_is_refused_naming_what_works(
    sampler: str, schedule: str, base_config: dict[str, object]
) -> None:
    try:
        choice = build_scheduler(sampler, schedule, base_config)
    except InvalidInput as refused:
        assert schedule in refused.message and sampler in refused.message
        workable = refused.hint.split("use one of: ")[1].split(", ")
        # Each offered name builds: that is this test's other branch for the same sampler.
        assert workable and schedule not in workable and set(workable) <= set(SIGMA_SCHEDULES)
        return
    choice.scheduler.set_timesteps(8)
    assert len(choice.scheduler.timesteps) >= 8
    assert int(choice.scheduler.timesteps[0]) >= 998  # every Fooocus schedule starts at full noise


def test_karras_sigmas_follow_the_karras_formula_over_the_models_full_range(
    base_config: dict[str, object],
) -> None:
    scheduler = build_scheduler("euler", "karras", base_config).scheduler
    scheduler.set_timesteps(5)
    trained = _training_sigmas(scheduler)
    sigma_min, sigma_max, rho = trained[0], trained[-1], 7.0
    ramp = np.linspace(0.0, 1.0, 5)
    expected = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    assert np.allclose(scheduler.sigmas.numpy()[:-1], expected, rtol=1e-4)
    assert float(scheduler.sigmas[-1]) == 0.0
    assert 14.6 < expected[0] < 14.62  # SDXL's σmax: not the weaker top of the "leading" spacing


def test_exponential_sigmas_are_evenly_spaced_in_log_sigma(base_config: dict[str, object]) -> None:
    scheduler = build_scheduler("euler", "exponential", base_config).scheduler
    scheduler.set_timesteps(6)
    trained = _training_sigmas(scheduler)
    expected = np.exp(np.linspace(np.log(trained[-1]), np.log(trained[0]), 6))
    assert np.allclose(scheduler.sigmas.numpy()[:-1], expected, rtol=1e-4)


@pytest.mark.parametrize("steps", [4, 8, 3, 7])
def test_normal_sgm_uniform_and_simple_timesteps_match_their_definitions(
    steps: int, base_config: dict[str, object]
) -> None:
    def timesteps(schedule: str) -> np.ndarray:
        scheduler = build_scheduler("euler", schedule, base_config).scheduler
        scheduler.set_timesteps(steps)
        return scheduler.timesteps.numpy()

    index = np.arange(steps)
    assert np.allclose(timesteps("normal"), np.linspace(999, 0, steps))
    # Both are diffusers' "trailing" spacing: within one training timestep of their definitions.
    assert np.abs(timesteps("sgm_uniform") - 999 * (1 - index / steps)).max() <= 1.0 + 1e-4
    simple = 999 - np.floor(1000 * index / steps)
    assert np.abs(timesteps("simple") - simple).max() <= 1.0 + 1e-4
    if 1000 % steps == 0:  # where n divides 1000, "simple" is exact
        assert np.array_equal(timesteps("simple"), simple)
    assert not np.allclose(timesteps("normal"), timesteps("sgm_uniform"))


def test_karras_exponential_and_normal_give_different_sigmas(base_config: dict[str, object]) -> None:
    sigmas = {}
    for schedule in ("karras", "exponential", "normal", "sgm_uniform"):
        scheduler = build_scheduler("euler", schedule, base_config).scheduler
        scheduler.set_timesteps(10)
        sigmas[schedule] = scheduler.sigmas.numpy()
    names = list(sigmas)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not np.allclose(sigmas[first], sigmas[second]), (first, second)


def test_lcm_scheduler_is_lcm_sampling_on_sgm_uniform_timesteps(base_config: dict[str, object]) -> None:
    choice = build_scheduler("lcm", "lcm", base_config)
    assert isinstance(choice.scheduler, LCMScheduler)
    choice.scheduler.set_timesteps(8)
    expected = np.round(999 * (1 - np.arange(8) / 8))
    assert np.array_equal(choice.scheduler.timesteps.numpy(), expected)


def test_lcm_scheduler_with_another_sampler_is_refused_pointing_at_sgm_uniform(
    base_config: dict[str, object],
) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_scheduler("euler", "lcm", base_config)
    assert "sgm_uniform" in caught.value.hint and "lcm" not in caught.value.hint.split(": ")[1].split(", ")


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        ("dpmpp_sde", DPMSolverSDEScheduler),
        ("dpmpp_sde_gpu", DPMSolverSDEScheduler),
        ("lcm", LCMScheduler),
        ("tcd", TCDScheduler),
        ("unipc", UniPCMultistepScheduler),
    ],
)
def test_new_sampler_names_build_their_diffusers_solver(
    sampler: str, expected: type, base_config: dict[str, object]
) -> None:
    schedule = "karras" if expected in (DPMSolverSDEScheduler, UniPCMultistepScheduler) else "sgm_uniform"
    assert isinstance(build_scheduler(sampler, schedule, base_config).scheduler, expected)
    assert sampler in sampler_names()


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> SDXLEngine:
    folder = tmp_path_factory.mktemp("tiny")
    engine = SDXLEngine(
        resolve_model("tiny-random", folder),
        models_dir=folder,
        hash_cache=folder / "hashes.json",
        device="cpu",
    )
    engine.load()
    return engine


@pytest.mark.parametrize(
    ("sampler", "schedule", "cfg"),
    [
        ("dpmpp_sde_gpu", "karras", 1.0),
        ("lcm", "lcm", 1.0),
        ("tcd", "sgm_uniform", 1.0),
        ("unipc", "karras", 4.0),
        ("euler_a", "karras", 4.0),
    ],
)
def test_new_samplers_denoise_the_tiny_model_end_to_end_reproducibly(
    tiny_engine: SDXLEngine, sampler: str, schedule: str, cfg: float
) -> None:
    request = default_request(sampler=sampler, scheduler=schedule, steps=2, cfg=cfg, sharpness=0.0)
    first = np.asarray(tiny_engine.generate(request).image)
    again = np.asarray(tiny_engine.generate(request).image)
    other_seed = np.asarray(tiny_engine.generate(replace(request, seed=request.seed + 1)).image)
    assert first.std() > 0  # a real image, not NaNs cast to black
    assert np.array_equal(first, again)  # the same seed gives the same image (SDE noise included)
    assert not np.array_equal(first, other_seed)
