"""The bundled style library, user style folders, name rules, search and the ``styles`` command."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from fooocusd.engine.styles import (
    PSEUDO_STYLES,
    bundled_styles_dir,
    category_from_file,
    load_styles,
    normalise_style_name,
    read_style_file,
    style_files,
)
from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.service.styles_command import styles as styles_command
from fooocusd.settings import LoadedSettings, Settings

NEGATIVE_ONLY_HELPERS = {"fooocusd Enhance", "fooocusd Negative", "fooocusd Semi Realistic"}
FOOOCUS_NAMES = [
    "Fooocus Enhance",
    "Fooocus Sharp",
    "Fooocus Masterpiece",
    "Fooocus Photograph",
    "Fooocus Negative",
    "Fooocus Cinematic",
    "Fooocus Semi Realistic",
    "Fooocus Pony",
]


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the bundled library -------------------------------------------------------------------------


def test_bundled_library_has_at_least_110_styles() -> None:
    assert len(load_styles([])) >= 110


def test_every_bundled_category_has_several_styles() -> None:
    counts = Counter(style.category for style in load_styles([]))
    assert len(counts) >= 8
    assert min(counts.values()) >= 5, counts


def test_every_bundled_style_has_a_placeholder_or_is_a_documented_negative_only_helper() -> None:
    for style in load_styles([]):
        if style.name in NEGATIVE_ONLY_HELPERS:
            assert style.is_negative_only and style.negative
        else:
            assert style.has_placeholder, style.name
            assert style.negative.strip(), style.name


def test_bundled_names_and_aliases_are_unique_after_normalisation() -> None:
    keys: list[str] = []
    for path in style_files(bundled_styles_dir()):
        for style in read_style_file(path):
            keys.append(style.key)
            keys.extend(normalise_style_name(alias).casefold() for alias in style.aliases)
    duplicates = [key for key, count in Counter(keys).items() if count > 1]
    assert duplicates == []


def test_bundled_templates_are_distinct() -> None:
    templates = [style.prompt for style in load_styles([]) if style.prompt]
    assert len(templates) == len(set(templates))


def test_no_bundled_style_claims_a_pseudo_style_name() -> None:
    library = load_styles([])
    names = {style.key for style in library}
    assert not names & {normalise_style_name(name).casefold() for name in PSEUDO_STYLES}


def test_fooocus_style_names_resolve_to_our_own_helpers() -> None:
    library = load_styles([])
    for name in FOOOCUS_NAMES:
        assert library.get(name).category == "Basics"
    assert library.get("fooocus sharp").name == "fooocusd Sharp"


def test_styles_named_in_the_readme_exist() -> None:
    library = load_styles([])
    assert library.get("Cinematic").category == "Cinema"
    assert library.get("Film Grain").category == "Photography"


def test_category_comes_from_the_file_name() -> None:
    assert category_from_file(Path("graphic-design.toml")) == "Graphic Design"
    assert category_from_file(Path("3d.toml")) == "3D"
    assert "3D" in load_styles([]).categories()


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sai-3d-model", "SAI 3D Model"),
        ("mre_dark-cyberpunk", "MRE Dark Cyberpunk"),
        ("film  NOIR", "Film Noir"),
        ("artstyle-(steampunk)", "Artstyle (Steampunk)"),
        ("Saint Mark", "Saint Mark"),
    ],
)
def test_names_normalise_like_fooocus(raw: str, expected: str) -> None:
    assert normalise_style_name(raw) == expected


def test_lookup_ignores_case_dashes_and_underscores() -> None:
    library = load_styles([])
    assert library.get("film-noir").name == "Film Noir"
    assert library.get("FILM_NOIR").name == "Film Noir"
    assert "  film noir " in library


def test_unknown_style_is_invalid_input_listing_close_matches() -> None:
    library = load_styles([])
    with pytest.raises(InvalidInput) as caught:
        library.get("Film Nior")
    assert "'Film Noir'" in caught.value.message
    assert caught.value.where == "styles"


def test_checking_a_job_list_reports_every_unknown_name_at_once() -> None:
    library = load_styles([])
    with pytest.raises(InvalidInput) as caught:
        library.canonical_names(["Cinematic", "Nope Style", "Watercolr"])
    assert "'Nope Style'" in caught.value.message and "'Watercolour'" in caught.value.message


def test_checking_a_job_list_returns_display_names_and_keeps_switches() -> None:
    library = load_styles([])
    names = library.canonical_names(["fooocus-v2", "random style", "fooocus enhance", "watercolor"])
    assert names == ["Fooocus V2", "Random Style", "fooocusd Enhance", "Watercolour"]


# --- user folders ---------------------------------------------------------------------------------


def test_user_toml_style_is_added_with_its_file_as_category(tmp_path: Path) -> None:
    _write(tmp_path, "my-looks.toml", '[[style]]\nname = "Moss"\nprompt = "{prompt}, moss"\nnegative = "x"\n')
    library = load_styles([tmp_path])
    assert library.get("moss").category == "My Looks"
    assert len(library) == len(load_styles([])) + 1


def test_user_style_overrides_a_bundled_one_with_the_same_normalised_name(tmp_path: Path) -> None:
    _write(tmp_path, "mine.toml", '[[style]]\nname = "film_noir"\nprompt = "my noir {prompt}"\n')
    bundled = load_styles([])
    library = load_styles([tmp_path])
    assert library.get("Film Noir").prompt == "my noir {prompt}"
    assert len(library) == len(bundled)
    assert library.names().index("film_noir") == bundled.names().index("Film Noir")


def test_later_user_folder_wins_over_an_earlier_one(tmp_path: Path) -> None:
    _write(tmp_path / "a", "s.toml", '[[style]]\nname = "Moss"\nprompt = "a {prompt}"\n')
    _write(tmp_path / "b", "s.toml", '[[style]]\nname = "moss"\nprompt = "b {prompt}"\n')
    assert load_styles([tmp_path / "a", tmp_path / "b"]).get("Moss").prompt == "b {prompt}"


def test_fooocus_json_collection_is_imported(tmp_path: Path) -> None:
    entries = [
        {"name": "sai-line-art", "prompt": "line art of {prompt}", "negative_prompt": "colour"},
        {"name": "Only Negative", "negative_prompt": "blurry"},
        {"name": "mre-comic", "prompt": "comic {prompt}", "extra": "ignored"},
    ]
    _write(tmp_path, "sdxl_styles_mine.json", json.dumps(entries, indent=2))
    library = load_styles([tmp_path])
    line_art = library.get("SAI Line Art")
    assert (line_art.name, line_art.prompt, line_art.negative) == (
        "SAI Line Art",
        "line art of {prompt}",
        "colour",
    )
    assert line_art.category == "Sdxl Styles Mine"
    assert library.get("only negative").is_negative_only
    assert library.get("MRE Comic").negative == ""


def test_non_style_files_and_hidden_files_in_a_user_folder_are_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "notes.txt", "not a style")
    _write(tmp_path, ".hidden.toml", "this is [ not toml")
    (tmp_path / "samples").mkdir()
    assert len(load_styles([tmp_path])) == len(load_styles([]))


def test_broken_user_toml_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.toml", '[[style]]\nname = "A"\nprompt = "{prompt}\n')
    with pytest.raises(ConfigError) as caught:
        load_styles([tmp_path])
    assert str(path) in caught.value.message
    assert caught.value.where == f"{path}, line 3"


def test_broken_user_json_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.json", '[\n  {"name": "A",\n   "prompt": "x" "y"}\n]')
    with pytest.raises(ConfigError) as caught:
        load_styles([tmp_path])
    assert caught.value.where == f"{path}, line 3"


def test_json_entry_without_a_name_points_at_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "s.json", '[\n  {"name": "A", "prompt": "{prompt}"},\n\n  {"prompt": "b {prompt}"}\n]'
    )
    with pytest.raises(ConfigError) as caught:
        load_styles([tmp_path])
    assert caught.value.where == f"{path}, line 4"
    assert "no name" in caught.value.message


def test_unknown_key_in_a_user_style_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    text = '[[style]]\nname = "A"\nprompt = "{prompt}"\n\n[[style]]\nname = "B"\nnegativ = "x"\n'
    path = _write(tmp_path, "s.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_styles([tmp_path])
    assert "'negativ'" in caught.value.message and "'negative'" in caught.value.message
    assert caught.value.where == f"{path}, line 5"


def test_a_style_that_does_nothing_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "s.toml", '[[style]]\nname = "Empty"\nprompt = " "\n')
    with pytest.raises(ConfigError, match="neither a prompt nor a negative"):
        load_styles([tmp_path])


def test_a_user_file_cannot_redefine_a_switch(tmp_path: Path) -> None:
    _write(tmp_path, "s.json", '[{"name": "fooocus-v2", "prompt": "{prompt}"}]')
    with pytest.raises(ConfigError, match="built-in switch"):
        load_styles([tmp_path])


def test_two_styles_with_the_same_name_in_one_file_are_refused(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "s.toml",
        '[[style]]\nname = "Moss"\nprompt = "{prompt}"\n[[style]]\nname = "MOSS"\nprompt = "x"\n',
    )
    with pytest.raises(ConfigError, match="already used by 'Moss'"):
        load_styles([tmp_path])


def test_a_missing_user_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_styles([tmp_path / "nowhere"])


# --- search and the command -----------------------------------------------------------------------


def test_search_puts_name_matches_before_template_matches() -> None:
    found = load_styles([]).search("noir")
    names = [style.name for style in found]
    assert set(names[:2]) == {"Film Noir", "Neon Noir"}


def test_search_needs_every_word_and_ignores_case() -> None:
    names = [style.name for style in load_styles([]).search("INK wash")]
    assert names[0] == "Ink Wash"
    assert all("ink" in (s.name + s.prompt).casefold() for s in load_styles([]).search("INK wash"))


def test_search_ranks_exact_name_then_name_then_category_then_template_matches() -> None:
    found = load_styles([]).search("anime")
    names = [style.name for style in found]
    assert names[0] == "Anime"
    assert names.index("Retro Anime") < names.index("Chibi")  # the name says it; the category says it
    assert names.index("Chibi") < names.index("fooocusd Sharp")  # only the negative template says it


def test_search_finds_a_whole_category() -> None:
    found = load_styles([]).search("basics")
    assert {style.category for style in found} == {"Basics"} and len(found) == 8


def test_empty_search_lists_everything() -> None:
    library = load_styles([])
    assert len(library.search("")) == len(library)


def _loaded() -> LoadedSettings:
    return LoadedSettings(settings=Settings(), config_file=None, sources={})


def test_styles_command_prints_matching_styles_in_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert styles_command(argparse.Namespace(search="watercolour"), _loaded()) == 0
    out = capsys.readouterr().out
    assert "Watercolour" in out and "Painting" in out and "transparent" in out
    assert "Film Noir" not in out


def test_styles_command_lists_the_switches_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert styles_command(argparse.Namespace(search=None), _loaded()) == 0
    out = capsys.readouterr().out
    assert "Fooocus V2" in out and "Random Style" in out and "Toy Bricks" in out


def test_styles_command_says_when_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert styles_command(argparse.Namespace(search="zzzqqq"), _loaded()) == 1
    assert "no style matches 'zzzqqq'" in capsys.readouterr().out


def test_styles_command_includes_styles_from_an_extra_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "mine.toml", '[[style]]\nname = "Moss Garden"\nprompt = "{prompt}, moss"\n')
    args = argparse.Namespace(search="moss garden", styles_dir=[tmp_path])
    assert styles_command(args, _loaded()) == 0
    assert "Moss Garden" in capsys.readouterr().out
