"""How a prompt, its extra lines, a negative and the selected styles become text-encoder workloads."""

from __future__ import annotations

import random

import pytest

from fooocusd.engine.styles import Style, StyleLibrary, Workloads, compose_workloads, load_styles
from fooocusd.errors import InvalidInput

LIBRARY = StyleLibrary(
    [
        Style("Painted", "Test", "oil painting of {prompt}, brushstrokes", "photo, blurry"),
        Style("Framed", "Test", "{prompt} in a gilded frame", "no frame"),
        Style("Two Lines", "Test", "first {prompt}\nsecond line, texture", "neg one\nneg two"),
        Style("Cleaner", "Test", "", "lowres, watermark"),
        Style("Suffix Only", "Test", "film grain, 35mm", ""),
        Style("Twice", "Test", "{prompt}, and again {prompt}", ""),
    ]
)


def _compose(
    prompt: str = "a cat",
    styles: tuple[str, ...] = (),
    *,
    negative: str = "",
    extra: tuple[str, ...] = (),
    seed: int = 0,
    library: StyleLibrary = LIBRARY,
) -> Workloads:
    return compose_workloads(prompt, list(extra), negative, list(styles), library, random.Random(seed))


def test_without_styles_the_prompt_is_the_only_positive_workload() -> None:
    result = _compose("a cat")
    assert result.positive == ["a cat"]
    assert result.negative == [""]
    assert result.styles_applied == []
    assert result.expansion is False


def test_a_style_replaces_its_placeholder_with_the_main_line() -> None:
    result = _compose("a cat", ("Painted",))
    assert result.positive == ["oil painting of a cat, brushstrokes"]


def test_every_placeholder_in_a_template_is_replaced() -> None:
    assert _compose("a cat", ("Twice",)).positive == ["a cat, and again a cat"]


def test_styles_apply_in_the_order_they_are_listed() -> None:
    result = _compose("a cat", ("Framed", "Painted"))
    assert result.positive == ["a cat in a gilded frame", "oil painting of a cat, brushstrokes"]
    assert result.negative == ["no frame", "photo, blurry"]
    assert result.styles_applied == ["Framed", "Painted"]


def test_each_line_of_a_multi_line_template_is_its_own_workload() -> None:
    result = _compose("a cat", ("Two Lines",))
    assert result.positive == ["first a cat", "second line, texture"]
    assert result.negative == ["neg one", "neg two"]


def test_raw_prompt_comes_first_when_no_selected_style_has_a_placeholder() -> None:
    result = _compose("a cat", ("Cleaner", "Suffix Only"))
    assert result.positive == ["a cat", "film grain, 35mm"]
    assert result.negative == ["lowres, watermark"]


def test_raw_prompt_is_not_repeated_when_any_selected_style_has_a_placeholder() -> None:
    result = _compose("a cat", ("Suffix Only", "Framed"))
    assert result.positive == ["film grain, 35mm", "a cat in a gilded frame"]


def test_user_negative_is_a_separate_workload_after_the_style_negatives() -> None:
    result = _compose("a cat", ("Painted", "Cleaner"), negative="dogs")
    assert result.negative == ["photo, blurry", "lowres, watermark", "dogs"]


def test_extra_prompt_lines_follow_the_styled_workloads() -> None:
    result = _compose("a cat\nsecond box line", ("Painted",), extra=("red collar", "green eyes\nsoft fur"))
    assert result.positive == [
        "oil painting of a cat, brushstrokes",
        "second box line",
        "red collar",
        "green eyes",
        "soft fur",
    ]


def test_only_the_first_line_is_styled_and_the_rest_stay_as_written() -> None:
    result = _compose("a cat\na dog", ("Framed",))
    assert result.positive == ["a cat in a gilded frame", "a dog"]


def test_extra_negative_lines_follow_the_user_negative() -> None:
    result = _compose("a cat", ("Cleaner",), negative="dogs\nbirds\n\nfish")
    assert result.negative == ["lowres, watermark", "dogs", "birds", "fish"]


def test_empty_workloads_are_dropped() -> None:
    result = _compose("\n  a cat  \n\n", ("Cleaner",), negative="\n\n", extra=("", "  ", ",."))
    assert result.positive == ["a cat"]
    assert result.negative == ["lowres, watermark"]


def test_prompt_lines_are_tidied_like_fooocus_does() -> None:
    result = _compose("  a   cat,  ", negative=" dogs. ")
    assert result.positive == ["a cat"]
    assert result.negative == ["dogs"]


def test_an_empty_prompt_with_no_styles_leaves_one_empty_workload_for_the_encoder() -> None:
    result = _compose("")
    assert result.positive == [""]
    assert result.negative == [""]


def test_expansion_switch_turns_on_expansion_and_is_not_a_template() -> None:
    result = _compose("a cat", ("Fooocus V2", "Painted"))
    assert result.expansion is True
    assert result.expansion_prompt == "a cat"
    assert result.positive == ["oil painting of a cat, brushstrokes"]
    assert result.styles_applied == ["Painted"]


def test_expansion_switch_alone_keeps_the_raw_prompt() -> None:
    result = _compose("a cat", ("fooocus-v2",))
    assert (result.expansion, result.positive, result.styles_applied) == (True, ["a cat"], [])


def test_expansion_is_off_when_the_main_line_is_empty() -> None:
    result = _compose("", ("Fooocus V2",), extra=("a cat",))
    assert result.expansion is False
    assert result.expansion_prompt == ""


def test_random_style_is_replaced_by_a_real_style_picked_from_the_seed() -> None:
    result = _compose("a cat", ("Random Style",), seed=7)
    expected = random.Random(7).choice(LIBRARY.styles)
    assert result.styles_applied == [expected.name]
    assert expected.name in LIBRARY.names()


def test_random_style_is_the_same_for_the_same_seed_and_varies_across_seeds() -> None:
    library = load_styles([])
    picks = [_compose("a cat", ("Random Style",), seed=seed, library=library) for seed in range(40)]
    again = [_compose("a cat", ("Random Style",), seed=seed, library=library) for seed in range(40)]
    assert picks == again
    assert len({pick.styles_applied[0] for pick in picks}) > 10


def test_each_random_style_in_a_list_draws_its_own_pick_in_order() -> None:
    rng = random.Random(3)
    first, second = rng.choice(LIBRARY.styles), rng.choice(LIBRARY.styles)
    result = _compose("a cat", ("Random Style", "Random Style"), seed=3)
    assert result.styles_applied == [first.name, second.name]


def test_style_names_are_matched_after_normalisation() -> None:
    result = _compose("a cat", ("two-lines", "PAINTED"))
    assert result.styles_applied == ["Two Lines", "Painted"]


def test_an_unknown_style_is_invalid_input_with_a_suggestion() -> None:
    with pytest.raises(InvalidInput) as caught:
        _compose("a cat", ("Paintd",))
    assert "Paintd" in caught.value.message and "'Painted'" in caught.value.message
    assert "fooocusd styles" in caught.value.hint


def test_bundled_fooocus_defaults_compose_in_order() -> None:
    library = load_styles([])
    result = _compose(
        "a lighthouse", ("Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"), negative="fog", library=library
    )
    sharp = library.get("fooocusd Sharp")
    enhance = library.get("fooocusd Enhance")
    assert result.positive == [sharp.prompt.replace("{prompt}", "a lighthouse")]
    assert result.negative == [enhance.negative, sharp.negative, "fog"]
    assert result.styles_applied == ["fooocusd Enhance", "fooocusd Sharp"]
    assert result.expansion is True
