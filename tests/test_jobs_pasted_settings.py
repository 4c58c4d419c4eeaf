"""A ``.txt`` job holding pasted generation settings: A1111/civitai data, or Fooocus's parameters JSON."""

from __future__ import annotations

import json

import pytest

from fooocusd.errors import InvalidInput
from fooocusd.jobs.txt_format import parse_txt, prompt_job_text
from tests.daemon_harness import Sandbox

CIVITAI = """\
a lighthouse on a cliff at dusk, dramatic sky,
masterpiece, (film grain:1.2)
Negative prompt: lowres, blurry,
watermark
Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, Model hash: 31e35c80fc, \
Model: juggernautXL_v9, Hires upscale: 1.5, ADetailer model: face_yolov8n.pt, Version: v1.6.0, \
Created Date: 2024-05-01T1234Z, Civitai resources: [{"type":"checkpoint","modelVersionId":290640}], \
Civitai metadata: {}
"""

FOOOCUS_LOG = {
    "prompt": "a cat in a hat",
    "negative_prompt": "blurry",
    "prompt_expansion": "a cat in a hat, intricate",
    "styles": "['Fooocus V2', 'Fooocus Enhance', 'SAI Anime']",
    "performance": "Quality",
    "steps": 60,
    "resolution": "(1152, 896)",
    "guidance_scale": 4,
    "sharpness": 2,
    "adm_guidance": "(1.5, 0.8, 0.3)",
    "base_model": "juggernautXL_v8Rundiffusion.safetensors",
    "refiner_model": "None",
    "refiner_switch": 0.5,
    "sampler": "dpmpp_2m_sde_gpu",
    "scheduler": "karras",
    "vae": "Default (model)",
    "seed": "42",
    "lora_combined_1": "sd_xl_offset_example-lora_1.0.safetensors : 0.1",
    "metadata_scheme": False,
    "version": "Fooocus v2.5.5",
}


def test_civitai_generation_data_becomes_the_jobs_settings_as_a1111_made_it(logged: list[str]) -> None:
    [spec] = parse_txt(CIVITAI, "civitai.txt")
    assert spec.prompt == "a lighthouse on a cliff at dusk, dramatic sky, masterpiece, (film grain:1.2)"
    assert spec.extra_prompts == [] and spec.negative == "lowres, blurry,\nwatermark"
    assert (spec.seed, spec.steps, spec.cfg, spec.aspect) == (1234567, 25, 6.5, "832*1216")
    assert (spec.sampler, spec.scheduler, spec.model) == ("dpmpp_2m", "karras", "juggernautXL_v9")
    # A1111 has none of Fooocus's refinements: they are off, so the recipe gives its picture.
    assert spec.sharpness == 0.0 and spec.adaptive_cfg == 6.5 and spec.adm_scaler_positive == 1.0
    said = " ".join(logged)
    assert "civitai.txt: read as A1111 generation data (prompt, negative," in said
    assert "Hires upscale, ADetailer model: fooocusd has no equivalent, so these are not used" in said
    assert "Model hash" not in said and "Version" not in said and "Civitai" not in said  # facts


def test_option_lines_after_the_pasted_settings_win_and_model_default_means_the_configured_one() -> None:
    [spec] = parse_txt(CIVITAI + "images: 3\nmodel: default\n\n# my own model\nseed: random\n", "c.txt")
    assert spec.images == 3 and spec.model is None and spec.seed is None
    assert "model" not in spec.model_fields_set and spec.steps == 25
    [plain] = parse_txt("a fox\nmodel: Default\n", "fox.txt")
    assert plain.model is None and "model" not in plain.model_fields_set


@pytest.mark.parametrize(
    ("after", "line"),
    [("one more prompt line\n", 6), ("images: 2\n---\nanother job\n", 7)],
    ids=["prompt text", "another job"],
)
def test_only_option_lines_may_follow_pasted_settings(after: str, line: int) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_txt(CIVITAI + after, "c.txt")
    assert raised.value.where == f"line {line}"
    assert "follows the pasted A1111 generation data (lines 1–5)" in raised.value.message
    assert "only option lines may follow" in raised.value.message


def test_a_bad_value_in_pasted_settings_points_at_the_pasted_lines() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_txt("a fox\nSteps: 900, Sampler: Euler a, CFG scale: 7, Seed: 1\n", "c.txt")
    assert raised.value.where == "the pasted A1111 generation data (lines 1–2)"


@pytest.mark.parametrize(
    "text",
    ["a fox\nSteps: 20, Sampler: Euler, Seed: abc\n", '{"prompt": "a fox", "steps": "lots", "seed": 1}\n'],
    ids=["A1111", "Fooocus"],
)
def test_a_pasted_value_that_cannot_be_read_refuses_the_file_saying_which(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_txt(text, "c.txt")
    assert "the pasted generation settings have a value fooocusd cannot read" in raised.value.message
    assert "is not a number" in raised.value.message and raised.value.where == "the pasted settings"


def test_fooocus_parameters_json_from_its_image_log_becomes_the_jobs_settings(logged: list[str]) -> None:
    [spec] = parse_txt(json.dumps(FOOOCUS_LOG, indent=0) + "\nimages: 2\n", "fooocus.txt")
    assert spec.prompt == "a cat in a hat" and spec.negative == "blurry" and spec.images == 2
    assert spec.styles == ["Fooocus V2", "Fooocus Enhance"]  # the one fooocusd has, by its alias
    assert (spec.seed, spec.steps, spec.performance, spec.aspect) == (42, 60, "quality", "1152*896")
    assert (spec.cfg, spec.sharpness, spec.adm_scaler_positive) == (4.0, 2.0, 1.5)
    assert spec.model == "juggernautXL_v8Rundiffusion.safetensors" and spec.refiner == "none"
    assert [(lora.name, lora.weight) for lora in spec.loras or []] == [
        ("sd_xl_offset_example-lora_1.0.safetensors", 0.1)
    ]
    said = " ".join(logged)
    assert "fooocus.txt: read as Fooocus parameters" in said
    assert "style(s) SAI Anime have no fooocusd equivalent: left out" in said


def test_a_fooocusd_sidecar_pasted_as_a_job_makes_its_image_again_with_more_images(sandbox: Sandbox) -> None:
    sandbox.drop("owl.txt", "an owl at night\nstyles: Film Noir\nseed: 77\nsteps: 4\n")
    assert sandbox.drain().ok
    [first] = sandbox.images()
    sidecar = first.with_suffix(".json").read_text()
    [spec] = parse_txt(sidecar + "\nimages: 2\n", "again.txt")
    assert (spec.prompt, spec.styles, spec.seed, spec.steps, spec.images) == (
        "an owl at night",
        ["Film Noir"],
        77,
        4,
        2,
    )


@pytest.mark.parametrize(
    "text",
    [
        "portrait: a woman, style: baroque, mood: dark, light: low\n",  # colons, but no Steps
        "a fox\nseed: 42\nsteps: 30\ncfg: 7\n",  # our own options, one per line
        '{"prompt": "a fox"}\n',  # JSON, but not Fooocus's parameters
        "a poster that reads Steps: 25, Sampler: Euler, CFG scale: 7\n",  # not a settings line
    ],
    ids=["prompt with colons", "option lines", "json prompt", "settings inside a prompt"],
)
def test_an_ordinary_job_file_is_not_taken_for_pasted_settings(text: str, logged: list[str]) -> None:
    parse_txt(text, "job.txt")
    assert not any("read as" in line for line in logged)


def test_a_recipe_given_to_submit_prompt_keeps_its_lines_and_takes_the_set_options() -> None:
    text = prompt_job_text(CIVITAI, ["images=2", "model=default"])
    [spec] = parse_txt(text, "submitted.txt")
    assert (spec.steps, spec.seed, spec.images, spec.model) == (25, 1234567, 2, None)
    assert spec.negative == "lowres, blurry,\nwatermark"


def test_the_daemon_renders_a_pasted_civitai_recipe_with_the_configured_model(sandbox: Sandbox) -> None:
    sandbox.drop("recipe.txt", CIVITAI + "model: default\n")
    assert sandbox.drain().ok
    [image] = sandbox.images()
    record = json.loads(image.with_suffix(".json").read_text())
    settings = (record["seed"], record["steps"], record["sampler"], record["cfg"])
    assert settings == (1234567, 25, "dpmpp_2m", 6.5)
    assert record["model"] == "tiny-random" and record["negative"] == "lowres, blurry,\nwatermark"


def test_what_a_pasted_recipe_changed_or_left_out_is_recorded_in_the_sidecar(sandbox: Sandbox) -> None:
    sandbox.drop("recipe.txt", CIVITAI.replace("DPM++ 2M Karras", "Restart") + "model: default\n")
    assert sandbox.drain().ok
    [image] = sandbox.images()
    notes = json.loads(image.with_suffix(".json").read_text())["notes"]
    assert notes[0] == "read from the A1111 generation data"
    assert "sampler 'restart' is not one fooocusd has: the default sampler is used" in notes
    assert any(
        note.startswith("Hires upscale, ADetailer model: fooocusd has no equivalent") for note in notes
    )


def test_a_note_after_a_pasted_recipe_comes_first_among_its_notes() -> None:
    [spec] = parse_txt(CIVITAI + "note: from civitai, for the poster\n", "recipe.txt")
    assert spec.notes[:2] == ["from civitai, for the poster", "read from the A1111 generation data"]
