"""Turning a spec into concrete requests: precedence, performance steps, seeds, aspect mapping."""

from __future__ import annotations

import random

import pytest

from fooocusd.jobs.performance import PERFORMANCE_STEPS
from fooocusd.jobs.presets import Preset
from fooocusd.jobs.resolve import (
    SDXL_SIZES,
    fix_seed,
    nearest_sdxl_size,
    normalise_aspect,
    output_format_for,
    resolve_requests,
)
from fooocusd.jobs.spec import MAX_SEED, JobSpec, LoraSpec
from fooocusd.settings import GenerationSettings

DEFAULTS = GenerationSettings()
MODEL = "configured.safetensors"


def resolve(spec: JobSpec, preset: Preset | None = None):
    return resolve_requests(spec, preset, DEFAULTS, MODEL)


def test_daemon_defaults_fill_everything_a_bare_job_leaves_out() -> None:
    [request] = resolve(JobSpec(prompt="a fox", seed=5))
    assert (request.prompt, request.seed, request.width, request.height) == ("a fox", 5, 1152, 896)
    assert (request.steps, request.cfg, request.sharpness) == (30, 4.0, 2.0)
    assert (request.sampler, request.scheduler, request.model) == ("dpmpp_2m_sde_gpu", "karras", MODEL)


def test_job_beats_preset_beats_defaults() -> None:
    preset = Preset(name="p", cfg=6.0, sampler="euler", negative="ugly", images=2, model="preset.safetensors")
    spec = JobSpec(prompt="a fox", seed=1, cfg=8.0)
    requests = resolve(spec, preset)
    assert len(requests) == 2  # images from the preset, since the job did not set it
    assert requests[0].cfg == 8.0  # job
    assert (requests[0].sampler, requests[0].negative) == ("euler", "ugly")  # preset
    assert requests[0].scheduler == "karras"  # defaults
    assert requests[0].model == "preset.safetensors"
    assert resolve(JobSpec(prompt="x", seed=1, model="job.safetensors"), preset)[0].model == "job.safetensors"


def test_explicit_job_values_win_even_when_equal_to_field_defaults() -> None:
    preset = Preset(name="p", images=4, negative="ugly")
    requests = resolve(JobSpec(prompt="x", seed=1, images=1, negative=""), preset)
    assert len(requests) == 1
    assert requests[0].negative == ""


@pytest.mark.parametrize(("mode", "steps"), list(PERFORMANCE_STEPS.items()))
def test_performance_sets_steps(mode: str, steps: int) -> None:
    assert resolve(JobSpec(prompt="x", seed=1, performance=mode))[0].steps == steps


def test_explicit_steps_beat_performance_and_a_job_mode_beats_preset_steps() -> None:
    assert resolve(JobSpec(prompt="x", seed=1, performance="quality", steps=12))[0].steps == 12
    preset = Preset(name="p", steps=40)
    assert resolve(JobSpec(prompt="x", seed=1), preset)[0].steps == 40
    assert resolve(JobSpec(prompt="x", seed=1, performance="lightning"), preset)[0].steps == 4
    assert resolve(JobSpec(prompt="x", seed=1), Preset(name="q", performance="quality"))[0].steps == 60


def test_seeds_increment_per_image_and_wrap_at_two_to_the_63() -> None:
    requests = resolve(JobSpec(prompt="x", seed=MAX_SEED - 1, images=3))
    assert [request.seed for request in requests] == [MAX_SEED - 1, MAX_SEED, 0]


def test_disable_seed_increment_gives_every_image_the_same_seed() -> None:
    requests = resolve(JobSpec(prompt="x", seed=77, images=3, disable_seed_increment=True))
    assert [request.seed for request in requests] == [77, 77, 77]


def test_fix_seed_draws_a_random_seed_once_and_keeps_a_given_one() -> None:
    spec = JobSpec(prompt="x")
    fixed = fix_seed(spec, random.Random(3))
    assert fixed.seed is not None and 0 <= fixed.seed <= MAX_SEED
    assert fixed.seed == fix_seed(spec, random.Random(3)).seed
    assert fix_seed(fixed, random.Random(4)).seed == fixed.seed
    assert fix_seed(JobSpec(prompt="x", seed=9), random.Random(3)).seed == 9


def test_unfixed_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="fix_seed"):
        resolve(JobSpec(prompt="x"))


def test_aspect_precedence_and_extra_prompts_and_styles_reach_the_request() -> None:
    preset = Preset(name="p", aspect="896*1152", styles=["Cinematic"])
    request = resolve(JobSpec(prompt="x", seed=1, extra_prompts=["rain"]), preset)[0]
    assert (request.width, request.height, request.styles, request.extra_prompts) == (
        896,
        1152,
        ("Cinematic",),
        ("rain",),
    )
    assert resolve(JobSpec(prompt="x", seed=1, aspect="1024*1024", styles=[]), preset)[0].styles == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16:9", "1344*768"),
        ("9:7", "1152*896"),
        ("1:1", "1024*1024"),
        ("4:3", "1152*896"),
        ("2.39:1", "1536*640"),
        ("3/1", "1728*576"),
        ("1:2", "704*1408"),
        ("1280X768", "1280*768"),
        ("1000*600", "1000*600"),
    ],
)
def test_ratio_maps_to_nearest_of_the_26_sizes_and_sizes_pass_through(text: str, expected: str) -> None:
    assert normalise_aspect(text) == expected


def test_every_fooocus_size_maps_to_itself_by_its_ratio() -> None:
    assert len(SDXL_SIZES) == 26
    for width, height in SDXL_SIZES:
        assert nearest_sdxl_size(width / height) == (width, height)


@pytest.mark.parametrize("text", ["0:1", "wide", "1001*600"])
def test_unreadable_or_invalid_aspect_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        normalise_aspect(text)


def test_output_format_precedence() -> None:
    preset = Preset(name="p", output_format="webp")
    assert output_format_for(JobSpec(prompt="x", output_format="jpeg"), preset, "png") == "jpeg"
    assert output_format_for(JobSpec(prompt="x"), preset, "png") == "webp"
    assert output_format_for(JobSpec(prompt="x"), None, "png") == "png"


def test_preset_images_and_negative_survive_a_journal_round_trip_when_dumped_exclude_unset() -> None:
    preset = Preset(name="p", images=3, negative="ugly")
    stored = JobSpec(prompt="x", seed=1).model_dump_json(exclude_unset=True)
    reloaded = JobSpec.model_validate_json(stored)
    requests = resolve(reloaded, preset)
    assert (len(requests), requests[0].negative) == (3, "ugly")


def test_fooocus_refinement_settings_follow_job_then_preset_then_defaults() -> None:
    [bare] = resolve(JobSpec(prompt="a fox", seed=1))
    assert (bare.adaptive_cfg, bare.clip_skip) == (7.0, 2)
    assert (bare.adm_scaler_positive, bare.adm_scaler_negative, bare.adm_scaler_end) == (1.5, 0.8, 0.3)
    preset = Preset(name="p", adaptive_cfg=5.0, adm_scaler_end=0.0, clip_skip=1)
    [mixed] = resolve(JobSpec(prompt="a fox", seed=1, adaptive_cfg=9.0), preset)
    assert (mixed.adaptive_cfg, mixed.adm_scaler_end, mixed.clip_skip) == (9.0, 0.0, 1)


def test_loras_come_from_preset_then_performance_then_job() -> None:
    preset = Preset(name="p", loras=[LoraSpec(name="offset.safetensors", weight=0.5)])
    spec = JobSpec(prompt="x", seed=1, performance="hyper_sd", loras=[LoraSpec(name="detail", weight=0.3)])
    assert resolve(spec, preset)[0].loras == (
        ("offset.safetensors", 0.5),
        ("sdxl_hyper_sd_4step_lora.safetensors", 0.8),
        ("detail", 0.3),
    )


def test_job_lora_of_the_same_file_replaces_the_preset_weight_and_weight_zero_removes_it() -> None:
    preset = Preset(
        name="p",
        loras=[LoraSpec(name="offset.safetensors", weight=0.5), LoraSpec(name="film", weight=0.25)],
    )
    spec = JobSpec(
        prompt="x",
        seed=1,
        loras=[LoraSpec(name="OFFSET", weight=0.9), LoraSpec(name="film.safetensors", weight=0.0)],
    )
    assert resolve(spec, preset)[0].loras == (("OFFSET", 0.9),)


def test_refiner_switch_and_vae_follow_job_then_preset_then_none() -> None:
    [bare] = resolve(JobSpec(prompt="x", seed=1))
    assert (bare.refiner, bare.refiner_switch, bare.vae) == ("", 0.8, "")
    preset = Preset(name="p", refiner="ref.safetensors", refiner_switch=0.75, vae="pony_vae.safetensors")
    [from_preset] = resolve(JobSpec(prompt="x", seed=1), preset)
    assert (from_preset.refiner, from_preset.refiner_switch, from_preset.vae) == (
        "ref.safetensors",
        0.75,
        "pony_vae.safetensors",
    )
    [from_job] = resolve(
        JobSpec(prompt="x", seed=1, refiner="None", refiner_switch=0.6, vae="default"), preset
    )
    assert (from_job.refiner, from_job.refiner_switch, from_job.vae) == ("", 0.6, "")


def test_named_preset_brings_its_model_files_but_tiny_random_ignores_them() -> None:
    preset = Preset(
        name="sai",
        model="base.safetensors",
        refiner="ref.safetensors",
        vae="v.safetensors",
        loras=[LoraSpec(name="offset", weight=0.5)],
    )
    [real] = resolve(JobSpec(prompt="x", seed=1), preset)
    assert (real.model, real.refiner, real.vae) == ("base.safetensors", "ref.safetensors", "v.safetensors")
    [tiny] = resolve_requests(JobSpec(prompt="x", seed=1), preset, DEFAULTS, "tiny-random")
    assert (tiny.model, tiny.refiner, tiny.vae, tiny.loras) == ("tiny-random", "", "", (("offset", 0.5),))
    [job_model] = resolve_requests(
        JobSpec(prompt="x", seed=1, model="m.safetensors"), preset, DEFAULTS, "tiny-random"
    )
    assert job_model.model == "m.safetensors"


def test_preset_without_a_model_keeps_the_configured_one() -> None:
    assert resolve(JobSpec(prompt="x", seed=1), Preset(name="default"))[0].model == MODEL
