"""``{a|b}`` random choices in prompts (ComfyUI / Dynamic Prompts syntax), alone and in a real job."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from fooocusd.engine.prompt_syntax import MAX_WILDCARD_DEPTH, WildcardLibrary, apply_wildcards, expand_prompts
from fooocusd.engine.prompt_variants import apply_choices
from fooocusd.errors import InvalidInput
from tests.daemon_harness import Sandbox


def _picks(text: str, draws: int = 400) -> Counter[str]:
    return Counter(apply_choices(text, random.Random(seed)) for seed in range(draws))


def test_a_choice_becomes_one_of_its_options_each_drawn_sometimes() -> None:
    picks = _picks("a {red|green|blue} car")
    assert set(picks) == {"a red car", "a green car", "a blue car"}
    assert min(picks.values()) > 80


def test_the_same_seed_always_makes_the_same_choice() -> None:
    text = "a {red|green|blue} {car|bus|bike} at {dawn|dusk}"
    assert len({apply_choices(text, random.Random(42)) for _ in range(5)}) == 1


def test_braces_without_a_bar_are_left_alone_for_emphasis_and_style_placeholders() -> None:
    assert apply_choices("a {cat} and {prompt}, {{very}} soft", random.Random(0)) == (
        "a {cat} and {prompt}, {{very}} soft"
    )


def test_weights_make_an_option_drawn_in_proportion() -> None:
    picks = _picks("{3::red|1::blue}", draws=2000)
    assert 0.68 < picks["red"] / 2000 < 0.82


def test_a_zero_weight_option_is_never_drawn() -> None:
    assert set(_picks("{0::red|blue}")) == {"blue"}


def test_a_count_picks_that_many_different_options_joined_by_commas() -> None:
    for seed in range(50):
        words = apply_choices("{2$$red|green|blue}", random.Random(seed)).split(", ")
        assert len(words) == 2 and len(set(words)) == 2 and set(words) <= {"red", "green", "blue"}


def test_a_count_range_and_a_custom_joiner_are_honoured() -> None:
    counts = {len(pick.split(" and ")) for pick in _picks("{1-3$$ and $$red|green|blue}")}
    assert counts == {1, 2, 3}
    assert {len(pick.split(", ")) for pick in _picks("{2-$$a|b|c|d}")} == {2, 3, 4}


def test_a_count_above_the_number_of_options_takes_them_all_once() -> None:
    assert sorted(apply_choices("{5$$a|b}", random.Random(0)).split(", ")) == ["a", "b"]


def test_an_empty_option_can_leave_the_words_out() -> None:
    assert set(_picks("a {red|} car")) == {"a red car", "a car"}


def test_nested_choices_and_wildcards_inside_choices_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "colour.txt").write_text("teal\n", encoding="utf-8")
    library = WildcardLibrary(tmp_path, bundled=None)
    picks = {
        apply_wildcards("{__colour__|{big|small}} car", library, random.Random(seed)) for seed in range(200)
    }
    assert picks == {"teal car", "big car", "small car"}


def test_a_wildcard_line_may_hold_a_choice(tmp_path: Path) -> None:
    (tmp_path / "weather.txt").write_text("{light|heavy} rain\n", encoding="utf-8")
    library = WildcardLibrary(tmp_path, bundled=None)
    picks = {apply_wildcards("__weather__", library, random.Random(seed)) for seed in range(100)}
    assert picks == {"light rain", "heavy rain"}


def test_a_wildcard_that_chooses_itself_forever_is_refused(tmp_path: Path) -> None:
    (tmp_path / "loop.txt").write_text("{__loop__|__loop__}\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=f"more than {MAX_WILDCARD_DEPTH} levels"):
        apply_wildcards("__loop__", WildcardLibrary(tmp_path, bundled=None), random.Random(0))


def test_prompts_without_choices_draw_exactly_what_they_drew_before(tmp_path: Path) -> None:
    (tmp_path / "animal.txt").write_text("\n".join(f"animal{n}" for n in range(50)), encoding="utf-8")
    expanded = expand_prompts(
        "a __animal__",
        (),
        "",
        wildcards=WildcardLibrary(tmp_path, bundled=None),
        rng=random.Random(9),
        image_index=0,
    )
    assert expanded.prompt == f"a {random.Random(9).choice([f'animal{n}' for n in range(50)])}"


def test_each_image_of_a_job_makes_its_own_choice_and_its_sidecar_records_it(sandbox: Sandbox) -> None:
    sandbox.drop("cars.txt", "a {red|green|blue|yellow|white|black} car\nimages: 6\nseed: 5\n")
    summary = sandbox.drain()
    assert summary.ok and summary.images_written == 6
    prompts = [json.loads(path.read_text(encoding="utf-8"))["prompt"] for path in sandbox.sidecars()]
    assert all(
        "{" not in prompt and prompt.startswith("a ") and prompt.endswith(" car") for prompt in prompts
    )
    assert len(set(prompts)) > 1
