"""Preset files: bundled set, user overrides, strict keys, and inbox-subfolder routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.jobs.presets import (
    bundled_presets_dir,
    list_presets,
    load_all_presets,
    load_preset,
    pick_preset_name,
    preset_for_subfolder,
    preset_search_dirs,
)
from fooocusd.settings import GenerationSettings


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "presets"
    folder.mkdir()
    return folder


def test_bundled_presets_load_and_name_no_model_file() -> None:
    presets = load_all_presets([bundled_presets_dir()])
    assert {"default", "portrait", "landscape", "square"} <= set(presets)
    assert all(preset.model is None and preset.description for preset in presets.values())
    default = presets["default"]
    # The default preset defers everything to the config's [generation] section.
    assert (default.performance, default.cfg, default.sampler, default.aspect) == (None, None, None, None)
    assert presets["portrait"].aspect == "896*1152"
    assert presets["landscape"].aspect == "1344*768"
    assert presets["square"].aspect == "1024*1024"


def test_user_preset_overrides_a_bundled_one_of_the_same_name(user_dir: Path) -> None:
    (user_dir / "portrait.toml").write_text('description = "mine"\naspect = "832*1216"\n')
    preset = load_preset("portrait", preset_search_dirs(user_dir))
    assert (preset.description, preset.aspect, preset.path) == (
        "mine",
        "832*1216",
        user_dir / "portrait.toml",
    )
    assert "default" in list_presets(preset_search_dirs(user_dir))


def test_preset_values_are_normalised_like_job_values(user_dir: Path) -> None:
    (user_dir / "fast.toml").write_text('performance = "Extreme Speed"\naspect = "16:9"\nformat = "jpg"\n')
    preset = load_preset("fast", [user_dir])
    assert (preset.performance, preset.aspect, preset.output_format) == ("extreme_speed", "1344*768", "jpeg")


def test_unknown_key_in_a_preset_is_a_config_error_naming_the_file(user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text('promt = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_preset("bad", [user_dir])
    assert str(user_dir / "bad.toml") in caught.value.message
    assert "'promt'" in caught.value.message


def test_invalid_value_in_a_preset_names_file_and_key(user_dir: Path) -> None:
    (user_dir / "bad.toml").write_text("cfg = 99\n")
    with pytest.raises(ConfigError) as caught:
        load_all_presets([user_dir])
    assert "bad.toml" in caught.value.message and "'cfg'" in caught.value.message


def test_missing_preset_is_invalid_input_listing_the_available_ones(user_dir: Path) -> None:
    (user_dir / "anime.toml").write_text('description = "x"\n')
    with pytest.raises(InvalidInput) as caught:
        load_preset("anmie", [user_dir])
    assert "did you mean 'anime'" in caught.value.message
    assert "anime" in caught.value.hint


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("portrait/cat.txt", "portrait"),
        ("Portrait/cat.txt", "portrait"),
        ("portrait/2024/may/cat.txt", "portrait"),
        ("cat.txt", None),
        ("holiday/cat.txt", None),
        (".portrait/cat.txt", None),
    ],
)
def test_subfolder_named_after_a_preset_applies_it(relpath: str, expected: str | None) -> None:
    assert preset_for_subfolder(relpath, [bundled_presets_dir()]) == expected


def test_job_preset_beats_subfolder_which_beats_the_configured_default() -> None:
    defaults = GenerationSettings(preset="default")
    assert pick_preset_name("square", "portrait", defaults) == "square"
    assert pick_preset_name(None, "portrait", defaults) == "portrait"
    assert pick_preset_name(None, None, defaults) == "default"
    assert pick_preset_name(None, None, GenerationSettings(preset="")) is None
