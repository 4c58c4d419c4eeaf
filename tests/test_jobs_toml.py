"""The .toml job format: one job, [[job]] tables with shared defaults, and its errors."""

from __future__ import annotations

import pytest

from fooocusd.errors import InvalidInput
from fooocusd.jobs.toml_format import parse_toml


def test_single_job_reads_every_key_at_top_level() -> None:
    text = """\
prompt = "a lighthouse at dusk"
extra_prompts = ["crashing waves"]
negative = "blurry"
seed = 42
images = 2
disable_seed_increment = true
preset = "landscape"
styles = ["Cinematic"]
aspect = "16:9"
steps = 20
performance = "Lightning"
cfg = 3.5
sharpness = 1
sampler = "euler"
scheduler = "sgm_uniform"
model = "other.safetensors"
format = "JPG"
priority = -2
name = "lighthouse"
image = "ref.png"
action = "Upscale (2x)"
"""
    [spec] = parse_toml(text, "job.toml")
    assert spec.prompt == "a lighthouse at dusk"
    assert spec.extra_prompts == ["crashing waves"]
    assert (spec.seed, spec.images, spec.disable_seed_increment) == (42, 2, True)
    assert spec.aspect == "1344*768"
    assert spec.performance == "lightning"
    assert spec.output_format == "jpeg"
    assert spec.image_action == "upscale_2x"
    assert (spec.priority, spec.name, spec.image) == (-2, "lighthouse", "ref.png")


def test_multiline_prompt_splits_into_main_and_extra_prompts() -> None:
    [spec] = parse_toml('prompt = """\na castle\n\nstorm clouds\n"""\nextra_prompts = ["rain"]', "job.toml")
    assert spec.prompt == "a castle"
    assert spec.extra_prompts == ["storm clouds", "rain"]


def test_job_tables_take_top_level_keys_as_shared_defaults() -> None:
    text = """\
negative = "text, watermark"
images = 2

[[job]]
prompt = "a cat"

[[job]]
prompt = "a dog"
images = 4
negative = ""
"""
    cat, dog = parse_toml(text, "batch.toml")
    assert (cat.prompt, cat.images, cat.negative) == ("a cat", 2, "text, watermark")
    assert (dog.prompt, dog.images, dog.negative) == ("a dog", 4, "")
    assert "negative" in dog.model_fields_set  # an explicit empty negative clears the preset's


def test_unknown_key_is_named_with_a_close_match() -> None:
    text = '[[job]]\nprompt = "a"\n\n[[job]]\nprompt = "b"\nnegatve = "blur"\n'
    with pytest.raises(InvalidInput) as caught:
        parse_toml(text, "batch.toml")
    error = caught.value
    assert "unknown key 'negatve' in [[job]] #2" in error.message
    assert "did you mean 'negative'?" in error.message
    assert error.where == "[[job]] #2, key 'negatve'"


def test_misspelled_job_table_name_suggests_job() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('[[jobs]]\nprompt = "a"\n', "batch.toml")
    assert "'jobs'" in caught.value.message and "did you mean 'job'" in caught.value.message


def test_single_bracket_job_table_explains_double_brackets() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('[job]\nprompt = "a"\n', "batch.toml")
    assert "[[job]]" in caught.value.hint


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ('seed = "abc"', "seed", "whole number"),
        ("prompt = 42", "prompt", "text"),
        ('cfg = "high"', "cfg", "a number"),
        ('disable_seed_increment = "maybe"', "disable_seed_increment", "true or false"),
        ('extra_prompts = "one"', "extra_prompts", "a list"),
    ],
)
def test_wrong_type_names_key_and_expected_type(line: str, key: str, expected: str) -> None:
    text = line if line.startswith("prompt") else f'prompt = "x"\n{line}'
    with pytest.raises(InvalidInput) as caught:
        parse_toml(text, "job.toml")
    assert f"'{key}'" in caught.value.message
    assert expected in caught.value.message
    assert caught.value.where == f"key '{key}'"


def test_wrong_type_in_a_shared_default_points_at_the_top_level_key() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('images = "many"\n[[job]]\nprompt = "a"\n', "batch.toml")
    assert "top-level key 'images'" in caught.value.where


def test_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('prompt = "a cat"\nseed 42\n', "job.toml")
    assert caught.value.where.startswith("line 2, column")
    assert "not valid TOML" in caught.value.message


def test_job_without_prompt_or_image_names_the_job_table() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('[[job]]\nprompt = "a"\n[[job]]\nseed = 3\n', "batch.toml")
    assert caught.value.where == "[[job]] #2"


def test_seed_minus_one_means_random() -> None:
    [spec] = parse_toml('prompt = "a"\nseed = -1\n', "job.toml")
    assert spec.seed is None


def test_styles_may_be_a_comma_separated_string() -> None:
    [spec] = parse_toml('prompt = "a"\nstyles = "Cinematic, Film Grain"\n', "job.toml")
    assert spec.styles == ["Cinematic", "Film Grain"]


def test_same_field_twice_through_an_alias_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('prompt = "a"\nformat = "png"\noutput_format = "webp"\n', "job.toml")
    assert "second time" in caught.value.message


def test_loras_as_tables_or_short_strings_plus_refiner_and_vae() -> None:
    tables = parse_toml(
        'prompt = "a fox"\nloras = [{ name = "ink", weight = 0.8 }, { name = "pastel" }]\n'
        'refiner = "sd_xl_refiner_1.0"\nrefiner_switch = 0.8\nvae = "default"\n',
        "job.toml",
    )[0]
    short = parse_toml('prompt = "a fox"\nloras = ["ink:0.8", "pastel"]\n', "job.toml")[0]
    expected = [("ink", 0.8), ("pastel", 1.0)]
    assert [(lora.name, lora.weight) for lora in tables.loras or []] == expected
    assert [(lora.name, lora.weight) for lora in short.loras or []] == expected
    assert (tables.refiner, tables.refiner_switch, tables.vae) == ("sd_xl_refiner_1.0", 0.8, "default")


def test_more_than_five_job_loras_are_refused_with_the_key_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('prompt = "a fox"\nloras = ["a", "b", "c", "d", "e", "f"]\n', "job.toml")
    assert caught.value.where == "key 'loras'"


def test_keys_of_fooocus_api_a1111_and_diffusers_set_the_same_fields() -> None:
    text = """\
prompt = "a lighthouse"
negative_prompt = "blurry"
image_number = 3
image_seed = 12
guidance_scale = 5.5
num_inference_steps = 24
sampler_name = "euler"
style_selections = ["Fooocus Sharp"]
performance_selection = "Speed"
aspect_ratios_selection = "(1152, 896)"
base_model_name = "other.safetensors"
save_extension = "webp"
read_wildcards_in_order = true
"""
    [spec] = parse_toml(text, "api.toml")
    assert (spec.negative, spec.images, spec.seed, spec.cfg, spec.steps) == ("blurry", 3, 12, 5.5, 24)
    assert (spec.sampler, spec.styles, spec.performance) == ("euler", ["Fooocus Sharp"], "speed")
    assert (spec.aspect, spec.model, spec.output_format) == ("1152*896", "other.safetensors", "webp")
    assert spec.wildcards_in_order is True
    with pytest.raises(InvalidInput, match="second time"):
        parse_toml('prompt = "a"\ncfg = 4\ncfg_scale = 7\n', "job.toml")


def test_width_and_height_together_set_the_size() -> None:
    [spec] = parse_toml('prompt = "a"\nwidth = 1024\nheight = 768\n', "job.toml")
    assert spec.aspect == "1024*768"


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        ('prompt = "a"\nwidth = 1024\n', "'width' is set but 'height' is not", "key 'width'"),
        ('prompt = "a"\nheight = 1024\n', "'height' is set but 'width' is not", "key 'height'"),
        (
            'prompt = "a"\nwidth = 1024\nheight = 768\naspect = "1:1"\n',
            "both 'aspect' and width",
            "key 'width'",
        ),
        (
            'prompt = "a"\nwidth = 1024\nheight = 30\n',
            "'width*height' = '1024*30' is not valid",
            "key 'width'",
        ),
    ],
)
def test_width_or_height_alone_or_beside_aspect_is_refused_at_the_width(
    text: str, message: str, where: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml(text, "job.toml")
    assert message in caught.value.message
    assert caught.value.where == where


def test_a_jobs_own_size_replaces_the_shared_one_whichever_way_each_is_written() -> None:
    text = """\
aspect = "16:9"

[[job]]
prompt = "square"
width = 512
height = 512

[[job]]
prompt = "shared"
"""
    assert [spec.aspect for spec in parse_toml(text, "jobs.toml")] == ["512*512", "1344*768"]
    text = 'width = 512\nheight = 512\n\n[[job]]\nprompt = "wide"\naspect = "16:9"\n\n[[job]]\nprompt = "b"\n'
    assert [spec.aspect for spec in parse_toml(text, "jobs.toml")] == ["1344*768", "512*512"]


def test_fooocus_preset_lora_rows_are_read_and_unused_slots_dropped() -> None:
    rows = '[["film.safetensors", 0.4], [true, "ink", 0.7], [false, "x", 1], ["None", 1.0]]'
    text = f'prompt = "a"\nloras = {rows}\n'
    [spec] = parse_toml(text, "rows.toml")
    assert [(lora.name, lora.weight) for lora in spec.loras] == [("film.safetensors", 0.4), ("ink", 0.7)]


def test_a_lora_row_of_another_shape_is_refused_with_the_spellings_shown() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_toml('prompt = "a"\nloras = [["film.safetensors", 0.4, 2]]\n', "rows.toml")
    assert caught.value.where == "key 'loras'" and '[["x", 0.8]]' in caught.value.hint


def test_fooocus_api_lora_tables_are_read_and_a_disabled_slot_is_dropped() -> None:
    text = """\
prompt = "a"
loras = [
  { enabled = true, model_name = "film.safetensors", weight = 0.4 },
  { enabled = false, model_name = "unused.safetensors", weight = 1.0 },
]
"""
    [spec] = parse_toml(text, "api.toml")
    assert [(lora.name, lora.weight) for lora in spec.loras] == [("film.safetensors", 0.4)]


def test_notes_may_be_one_text_or_a_list_and_too_many_are_refused() -> None:
    [one, many] = parse_toml(
        '[[job]]\nprompt = "a"\nnote = "v2"\n[[job]]\nprompt = "b"\nnotes = ["x", "y"]\n', "j.toml"
    )
    assert (one.notes, many.notes) == (["v2"], ["x", "y"])
    with pytest.raises(InvalidInput, match="notes"):
        parse_toml(f'prompt = "a"\nnotes = {[str(n) for n in range(33)]}\n', "j.toml")
