"""The .txt job format: prompt lines, option lines, separators, comments and errors."""

from __future__ import annotations

import pytest
from loguru import logger

from fooocusd.errors import InvalidInput, shown_value
from fooocusd.jobs.txt_format import parse_txt


def only(text: str):
    specs = parse_txt(text, "job.txt")
    assert len(specs) == 1
    return specs[0]


def test_bare_prompt_is_a_job_with_only_a_prompt() -> None:
    spec = only("a red fox in fresh snow, morning light\n")
    assert spec.prompt == "a red fox in fresh snow, morning light"
    assert spec.extra_prompts == []
    assert spec.model_fields_set == {"prompt", "extra_prompts"}


def test_following_lines_become_extra_prompts_in_order() -> None:
    spec = only("a castle on a hill\nstorm clouds\n\n   golden hour  \n")
    assert spec.prompt == "a castle on a hill"
    assert spec.extra_prompts == ["storm clouds", "golden hour"]


@pytest.mark.parametrize(
    "line",
    [
        "portrait: a woman in red",
        "style: baroque, gold",
        "Photo: 35mm, f/1.8",
        "a cat: sleeping",
        "1girl: smiling",
    ],
)
def test_prompt_with_colon_whose_prefix_is_not_a_known_key_stays_prompt_text(line: str) -> None:
    spec = only(line)
    assert spec.prompt == line


def test_prompt_escape_allows_a_prompt_that_starts_with_a_known_key() -> None:
    spec = only("prompt: model: a woman on a catwalk\nseed: 7")
    assert spec.prompt == "model: a woman on a catwalk"
    assert spec.seed == 7
    assert spec.model is None


def test_every_option_key_sets_its_field() -> None:
    text = """\
a lighthouse at dusk
negative: blurry, low quality
seed: 1234
images: 3
preset: portrait
styles: Cinematic, Film Grain ,
aspect: 1152x896
steps: 25
performance: Extreme Speed
cfg: 5.5
sharpness: 3
sampler: euler
scheduler: normal
model: juggernautXL.safetensors
format: jpg
priority: 5
name: lighthouse
image: photos/lighthouse.png
action: Vary (Strong)
disable seed increment: yes
"""
    spec = only(text)
    assert spec.prompt == "a lighthouse at dusk"
    assert spec.negative == "blurry, low quality"
    assert spec.seed == 1234
    assert spec.images == 3
    assert spec.preset == "portrait"
    assert spec.styles == ["Cinematic", "Film Grain"]
    assert spec.aspect == "1152*896"
    assert spec.steps == 25
    assert spec.performance == "extreme_speed"
    assert spec.cfg == 5.5
    assert spec.sharpness == 3.0
    assert spec.sampler == "euler"
    assert spec.scheduler == "normal"
    assert spec.model == "juggernautXL.safetensors"
    assert spec.output_format == "jpeg"
    assert spec.priority == 5
    assert spec.name == "lighthouse"
    assert spec.image == "photos/lighthouse.png"
    assert spec.image_action == "vary_strong"
    assert spec.disable_seed_increment is True


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("Negative-Prompt: text", "negative", "text"),
        ("OUTPUT FORMAT: webp", "output_format", "webp"),
        ("image_action: upscale 1.5x", "image_action", "upscale_1.5x"),
        ("Disable-Seed-Increment: true", "disable_seed_increment", True),
        ("aspect ratio: 1:1", "aspect", "1024*1024"),
        ("performance: hyper-sd", "performance", "hyper_sd"),
        ("performance: EXTREME_SPEED", "performance", "extreme_speed"),
        ("seed : 99", "seed", 99),
    ],
)
def test_option_keys_and_values_are_case_space_and_dash_insensitive(
    line: str, field: str, value: object
) -> None:
    spec = only(f"a bowl of fruit\n{line}")
    assert getattr(spec, field) == value


@pytest.mark.parametrize(("ratio", "size"), [("16:9", "1344*768"), ("9:7", "1152*896"), ("9:16", "768*1344")])
def test_ratio_aspect_maps_to_nearest_fooocus_size(ratio: str, size: str) -> None:
    assert only(f"a bridge\naspect: {ratio}").aspect == size


@pytest.mark.parametrize("word", ["random", "-1", "Random"])
def test_random_seed_words_leave_the_seed_unset(word: str) -> None:
    assert only(f"a bridge\nseed: {word}").seed is None


def test_options_may_come_before_the_prompt() -> None:
    spec = only("seed: 5\n\na quiet harbour\nfog")
    assert (spec.seed, spec.prompt, spec.extra_prompts) == (5, "a quiet harbour", ["fog"])


def test_dash_line_separates_jobs_each_with_its_own_options() -> None:
    text = "a cat\nseed: 1\n  ---  \na dog\nimages: 2\n---\na bird\n"
    specs = parse_txt(text, "job.txt")
    assert [spec.prompt for spec in specs] == ["a cat", "a dog", "a bird"]
    assert [spec.seed for spec in specs] == [1, None, None]
    assert [spec.images for spec in specs] == [1, 2, 1]


def test_empty_blocks_from_leading_trailing_or_doubled_separators_are_skipped() -> None:
    specs = parse_txt("---\na cat\n---\n---\n# only a comment\n---\na dog\n---\n", "job.txt")
    assert [spec.prompt for spec in specs] == ["a cat", "a dog"]


def test_comment_lines_are_ignored_but_hash_inside_a_prompt_is_kept() -> None:
    spec = only("# my favourite\na neon sign reading #1\n   # indented comment\nseed: 3")
    assert spec.prompt == "a neon sign reading #1"
    assert spec.extra_prompts == []
    assert spec.seed == 3


def test_utf8_bom_and_crlf_line_endings_are_accepted() -> None:
    spec = only("\ufeffa café at night\r\nseed: 8\r\n")
    assert spec.prompt == "a café at night"
    assert spec.seed == 8


def test_bad_option_value_names_its_line_and_gives_a_hint() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a bridge\n\nseed: forty-two\n", "job.txt")
    error = caught.value
    assert error.where == "line 3"
    assert "seed" in error.message and "forty-two" in error.message
    assert "whole number" in error.hint


def test_prose_after_a_key_word_suggests_the_prompt_escape() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a bridge\nSeed: the beginning of life\n", "job.txt")
    assert caught.value.where == "line 2"
    assert "prompt: <the line>" in caught.value.hint
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a bridge\ncfg: 100\n", "job.txt")
    assert "prompt:" not in caught.value.hint


@pytest.mark.parametrize(
    ("line", "hint_word"),
    [
        ("aspect: wide", "16:9"),
        ("performance: turbo", "Lightning"),
        ("format: gif", "webp"),
        ("action: explode", "vary_subtle"),
        ("images: 99", "1 to 32"),
        ("cfg: 100", "1 to 30"),
        ("name: ../escape", "plain file name"),
    ],
)
def test_invalid_values_are_refused_with_the_allowed_ones_in_the_hint(line: str, hint_word: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt(f"a bridge\n{line}", "job.txt")
    assert caught.value.where == "line 2"
    assert hint_word in caught.value.hint


def test_error_in_second_job_gives_the_line_number_in_the_file() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a cat\n---\na dog\nsteps: 0\n", "job.txt")
    assert caught.value.where == "line 4"


def test_block_with_options_but_no_prompt_is_an_error_naming_the_block() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a cat\n---\nseed: 4\nimages: 2\n", "job.txt")
    error = caught.value
    assert "job 2" in error.where and "lines 3" in error.where
    assert "no prompt" in error.message


def test_option_set_twice_in_a_block_names_both_lines() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a cat\nseed: 1\nseed: 2\n", "job.txt")
    assert caught.value.where == "line 3"
    assert "lines 2 and 3" in caught.value.message


def test_two_names_for_one_option_are_both_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a cat\nsize: 1024x1024\naspect: 16:9\n", "job.txt")
    assert "'size' and 'aspect' set the same option" in caught.value.message
    assert caught.value.where == "line 3"


@pytest.mark.parametrize(
    ("line", "aspect"),
    [("size: 1024x1024", "1024*1024"), ("Size: 832 x 1216", "832*1216"), ("resolution: 16:9", "1344*768")],
)
def test_a1111_size_and_resolution_lines_set_the_aspect(line: str, aspect: str) -> None:
    spec = only(f"a lighthouse\n{line}\n")
    assert (spec.aspect, spec.extra_prompts) == (aspect, [])


def test_a_size_line_in_prose_stays_prompt_text_without_a_warning(logged: list[str]) -> None:
    spec = only("a giant\nSize: enormous, towering over the hills\n")
    assert spec.aspect is None
    assert spec.extra_prompts == ["Size: enormous, towering over the hills"]
    assert not any("read as prompt text" in line for line in logged)


def test_option_without_value_is_an_error() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("a cat\nnegative:\n", "job.txt")
    assert caught.value.where == "line 2"


def test_file_with_only_comments_and_blank_lines_is_an_error() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt("# nothing yet\n\n", "job.txt")
    assert "no prompt" in caught.value.message


def test_image_option_alone_makes_a_job_without_prompt() -> None:
    spec = only("image: cat.png\naction: upscale_2x")
    assert (spec.prompt, spec.image, spec.image_action) == ("", "cat.png", "upscale_2x")


def test_mistyped_option_key_stays_prompt_text_and_is_logged() -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        spec = only("a bridge\nnegatve: blurry")
    finally:
        logger.remove(sink)
    assert spec.extra_prompts == ["negatve: blurry"]
    assert any("line 2" in message and "'negative'" in message for message in messages)


def test_refinement_options_are_recognised_in_txt_files() -> None:
    [spec] = parse_txt("a fox\nadaptive cfg: 5\nADM scaler end: 0\nclip-skip: 1\n", "fox.txt")
    assert (spec.prompt, spec.adaptive_cfg, spec.adm_scaler_end, spec.clip_skip) == ("a fox", 5.0, 0.0, 1)


def test_lora_lines_repeat_and_refiner_switch_and_vae_are_options() -> None:
    spec = only(
        "a red fox\nlora: ink:0.6\nlora: styles/pastel\nrefiner: sd_xl_refiner_1.0\n"
        "refiner switch: 0.7\nvae: sdxl_vae\n"
    )
    assert [(lora.name, lora.weight) for lora in spec.loras or []] == [("ink", 0.6), ("styles/pastel", 1.0)]
    assert (spec.refiner, spec.refiner_switch, spec.vae) == ("sd_xl_refiner_1.0", 0.7, "sdxl_vae")


def test_lora_weight_out_of_range_points_at_its_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        only("a red fox\nlora: ink:3\n")
    assert caught.value.where == "line 2" and "-2 to 2" in caught.value.hint


def test_width_height_and_other_tools_key_names_are_options_in_txt_files() -> None:
    spec = only("a cat\nwidth: 1024\nheight: 768\nCFG Scale: 6\nsampler name: euler\nImage Number: 3")
    assert (spec.prompt, spec.extra_prompts) == ("a cat", [])
    assert (spec.aspect, spec.cfg, spec.sampler, spec.images) == ("1024*768", 6.0, "euler", 3)


def test_height_alone_in_a_txt_file_names_its_line_and_the_prompt_escape() -> None:
    with pytest.raises(InvalidInput) as caught:
        only("a cat\nheight: 7 feet tall")
    assert caught.value.where == "line 2"
    assert "'height' is set but 'width' is not" in caught.value.message
    assert "prompt: <the line>" in caught.value.hint


def test_an_overlong_value_is_quoted_short_in_the_error_with_a_hint_to_shorten_it() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_txt("a fox " * 5000, "huge.txt")
    message = raised.value.message
    assert len(message) < 300 and "… (29,999 characters) is not valid" in message
    assert raised.value.hint == "shorten it to at most 20,000 characters"


def test_a_txt_with_more_prompt_lines_than_a_job_takes_says_which_line_is_over_and_what_to_do() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_txt("\n".join(f"line {n}" for n in range(40)), "lines.txt")
    assert raised.value.message == (
        "lines.txt: job 1 (lines 1–40) has 40 prompt lines; a job takes the main prompt and at most 32 more"
    )
    assert raised.value.where == "line 34"
    assert raised.value.hint.startswith("each line after the first is an extra prompt, encoded on its own")


def test_a_short_value_is_quoted_whole() -> None:
    assert shown_value("banana") == "'banana'" and shown_value(7) == "7"
    assert shown_value(list(range(100))).endswith("… (100 entries)")


def test_a_note_line_is_kept_as_a_note_not_read_as_a_prompt_line() -> None:
    [spec] = parse_txt("a red fox\nNote: for the Acme brief\nseed: 4\n", "fox.txt")
    assert (spec.prompt, spec.extra_prompts, spec.notes) == ("a red fox", [], ["for the Acme brief"])


@pytest.mark.parametrize("line", ["cfg: nan", "sharpness: inf", "denoise: -inf", "lora: ink:nan"])
def test_nan_and_infinity_are_refused_as_not_a_finite_number(line: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_txt(f"a cat\n{line}\n", "job.txt")
    assert "Input should be a finite number" in caught.value.message
    assert caught.value.where == "line 2"
