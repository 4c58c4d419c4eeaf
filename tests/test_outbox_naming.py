from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.outbox import folder_names
from fooocusd.outbox.folder_names import FolderNames
from fooocusd.outbox.naming import (
    MAX_NAME_BYTES,
    TEMPLATE_FIELDS,
    choose_free_name,
    model_stem,
    name_fields,
    render_name,
    sidecar_path_for,
    validate_template,
)

_PROMPT = "a  cat\non a sofa, in the evening light, very detailed, 8k"


def _fields(prompt: str = _PROMPT, **overrides: Any) -> dict[str, Any]:
    fields = name_fields(
        stem="cat",
        seed=1234,
        index=0,
        count=2,
        job_id="0f3a9c12-7777-4e4e-9999-123456789abc",
        finished=datetime(2025, 1, 31, 14, 3, 59),
        width=1152,
        height=896,
        model="juggernautXL_v8.safetensors",
        performance="speed",
        prompt=prompt,
    )
    fields.update(overrides)
    return fields


def test_default_template_renders_stem_seed_and_index() -> None:
    assert render_name("{stem}_{seed}_{index}", _fields()) == "cat_1234_0"


def test_every_documented_field_has_a_value_and_renders() -> None:
    fields = _fields()
    template = "_".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)

    validate_template(template)
    assert set(fields) == set(TEMPLATE_FIELDS)
    assert render_name("{job}_{date}_{time}_{number}of{count}_{model}", fields) == (
        "0f3a9c12_2025-01-31_14-03-59_1of2_juggernautXL_v8"
    )
    assert fields["prompt"] == "a cat on a sofa, in the evening light, v"


def test_format_specs_are_applied() -> None:
    assert render_name("{stem}-{index:03d}", _fields(index=7)) == "cat-007"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("a/b", "a-b_1234"), ("/etc/passwd", "-etc-passwd_1234"), ("x\\..\\y", "x-..-y_1234")],
)
def test_path_separators_in_a_value_become_dashes_and_make_no_folder(stem: str, expected: str) -> None:
    assert render_name("{stem}_{seed}", _fields(stem=stem)) == expected


@pytest.mark.parametrize("stem", ["../x", "..\\x"])
def test_a_value_that_would_lead_out_of_the_outbox_makes_a_refused_dotfile_name(stem: str) -> None:
    with pytest.raises(InvalidInput, match="start with a dot"):
        render_name("{stem}_{seed}", _fields(stem=stem))


def test_a_prompt_with_slashes_and_leading_dots_names_a_plain_file() -> None:
    assert render_name("{prompt}_{seed}", _fields(prompt="AC/DC poster")) == "AC-DC poster_1234"
    assert render_name("{prompt}_{seed}", _fields(prompt="../../etc/cron.d/evil")) == "etc-cron.d-evil_1234"
    assert render_name("{prompt}_{seed}", _fields(prompt="...and then -v")) == "and then -v_1234"


def test_slashes_in_the_template_make_folders() -> None:
    assert render_name("{date}/{stem}_{seed}_{index}", _fields()) == "2025-01-31/cat_1234_0"
    assert render_name("{model}/{performance}/{index:03d}", _fields()) == "juggernautXL_v8/speed/000"
    assert render_name("{{raw}}/{stem}", _fields()) == "{raw}/cat"


def test_a_folder_that_renders_empty_is_left_out() -> None:
    assert render_name("{prompt}/{stem}_{seed}", _fields(prompt="???")) == "cat_1234"


def test_a_folder_name_loses_leading_dots_and_unsafe_characters() -> None:
    assert render_name("{stem}/{seed}", _fields(stem="..a:b?")) == "ab/1234"
    assert render_name("{stem}/{seed}", _fields(stem="NUL")) == "_NUL/1234"


def test_a_long_folder_name_is_capped_in_bytes() -> None:
    folder, name = render_name("{stem}/{seed}", _fields(stem="y" * 400)).split("/")

    assert len(folder.encode("utf-8")) == MAX_NAME_BYTES
    assert name == "1234"


@pytest.mark.parametrize("stem", [".hidden", "..", ":.x"])
def test_names_that_would_be_dotfiles_are_refused(stem: str) -> None:
    with pytest.raises(InvalidInput, match="start with a dot"):
        render_name("{stem}_{seed}", _fields(stem=stem))


def test_empty_result_is_refused() -> None:
    with pytest.raises(InvalidInput, match="empty file name"):
        render_name("{stem}", _fields(stem="???"))


def test_unknown_field_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_template("{stem}_{colour}")

    assert "{colour}" in caught.value.message
    assert "stem" in caught.value.hint and "seed" in caught.value.hint
    assert caught.value.where == "outbox.name_template"


@pytest.mark.parametrize("template", ["{stem.__class__}", "{stem[0]}", "{stem!r}", "{index:{seed}}"])
def test_attribute_index_and_nested_fields_are_refused(template: str) -> None:
    with pytest.raises(ConfigError):
        validate_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "..\\{stem}",
        "out\\{stem}",
        ".{stem}",
        "",
        "{stem",
        "{stem:03d}",
        "/{stem}",
        "{date}/",
        "{date}//{stem}",
        "../{stem}",
        "{date}/./{stem}",
        ".cache/{stem}",
        " /{stem}",
        "{index:/>3}",
    ],
)
def test_unusable_templates_are_refused_at_startup(template: str) -> None:
    with pytest.raises(ConfigError):
        validate_template(template)


def test_characters_unsafe_on_windows_and_android_are_stripped() -> None:
    name = render_name("{stem}_{seed}", _fields(stem='a<b>c:d"e|f?g*h\x01i\x7fj'))

    assert name == "abcdefghij_1234"


def test_trailing_dots_and_spaces_are_removed() -> None:
    assert render_name("{stem}", _fields(stem="cat. . ")) == "cat"


def test_windows_reserved_device_names_get_a_prefix() -> None:
    assert render_name("{stem}", _fields(stem="CON")) == "_CON"
    assert render_name("{stem}_{seed}", _fields(stem="con")) == "con_1234"


def test_long_stems_are_shortened_so_seed_and_index_survive() -> None:
    name = render_name("{stem}_{seed}_{index}", _fields(stem="x" * 400, index=3))

    assert len(name.encode("utf-8")) == MAX_NAME_BYTES
    assert name.endswith("_1234_3")


def test_multibyte_names_are_capped_in_bytes_without_splitting_characters() -> None:
    name = render_name("{stem}", _fields(stem="猫" * 200))

    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert set(name) == {"猫"}


def test_model_stem_strips_checkpoint_extensions_only() -> None:
    assert model_stem("/models/juggernautXL_v8.safetensors") == "juggernautXL_v8"
    assert model_stem("sd_xl_base_1.0") == "sd_xl_base_1.0"


def test_sidecar_sits_beside_the_image_with_a_json_extension(tmp_path: Path) -> None:
    assert sidecar_path_for(tmp_path / "cat_1_0.png") == tmp_path / "cat_1_0.json"


def test_free_name_gets_a_counter_when_image_or_sidecar_exists(tmp_path: Path) -> None:
    assert choose_free_name(tmp_path, "cat", "png") == tmp_path / "cat.png"

    (tmp_path / "cat.png").write_bytes(b"")
    assert choose_free_name(tmp_path, "cat", ".png") == tmp_path / "cat-1.png"

    (tmp_path / "cat-1.json").write_bytes(b"")
    assert choose_free_name(tmp_path, "cat", "png") == tmp_path / "cat-2.png"


def test_free_name_skips_names_the_caller_has_reserved(tmp_path: Path) -> None:
    reserved = {tmp_path / "cat.png", tmp_path / "cat-1.png"}

    assert choose_free_name(tmp_path, "cat", "png", reserved.__contains__) == tmp_path / "cat-2.png"


def test_free_name_treats_case_variants_as_taken(tmp_path: Path) -> None:
    (tmp_path / "CAT.PNG").write_bytes(b"")

    assert choose_free_name(tmp_path, "cat", "png") == tmp_path / "cat-1.png"


def test_free_name_in_a_missing_folder_is_the_plain_name(tmp_path: Path) -> None:
    assert choose_free_name(tmp_path / "new", "cat", "webp") == tmp_path / "new" / "cat.webp"


# -- kept listings (FolderNames) ------------------------------------------------------------------


def _touch_folder(folder: Path, modified_ns: int) -> None:
    os.utime(folder, ns=(modified_ns, modified_ns))


def test_a_kept_listing_is_made_once_while_the_folder_is_unchanged(tmp_path: Path) -> None:
    names = FolderNames()
    (tmp_path / "Cat.png").write_bytes(b"")
    assert choose_free_name(tmp_path, "cat", "png", names=names) == tmp_path / "cat-1.png"
    assert choose_free_name(tmp_path, "dog", "png", names=names) == tmp_path / "dog.png"
    assert names.listings == 1


def test_a_chosen_name_is_taken_at_once_before_anything_is_written(tmp_path: Path) -> None:
    names = FolderNames()
    assert choose_free_name(tmp_path, "cat", "png", names=names) == tmp_path / "cat.png"
    assert choose_free_name(tmp_path, "Cat", "png", names=names) == tmp_path / "Cat-1.png"
    assert names.listings == 1


def test_a_folder_someone_else_changed_is_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folder_names, "RELIST_COST_FACTOR", 0.0)
    names = FolderNames()
    _touch_folder(tmp_path, 1_000_000_000)
    assert choose_free_name(tmp_path, "cat", "png", names=names) == tmp_path / "cat.png"
    (tmp_path / "DOG.JSON").write_bytes(b"")  # a case variant of dog.png's sidecar
    _touch_folder(tmp_path, 2_000_000_000)
    assert choose_free_name(tmp_path, "dog", "png", names=names) == tmp_path / "dog-1.png"
    assert names.listings == 2


def test_a_changed_folder_waits_its_turn_but_exact_names_are_always_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folder_names, "RELIST_COST_FACTOR", 1e12)
    names = FolderNames()
    assert choose_free_name(tmp_path, "cat", "png", names=names) == tmp_path / "cat.png"
    (tmp_path / "dog.json").write_bytes(b"")
    _touch_folder(tmp_path, 3_000_000_000)
    assert choose_free_name(tmp_path, "dog", "png", names=names) == tmp_path / "dog-1.png"
    assert names.listings == 1, "listed once: the next listing is not due yet"


def test_an_exact_name_that_appeared_within_the_clock_granularity_is_still_seen(tmp_path: Path) -> None:
    names = FolderNames()
    _touch_folder(tmp_path, 1_000_000_000)
    assert names.existing(tmp_path) == set()
    (tmp_path / "cat.json").write_bytes(b"")
    _touch_folder(tmp_path, 1_000_000_000)  # the folder's time did not move
    assert choose_free_name(tmp_path, "cat", "png", names=names) == tmp_path / "cat-1.png"
    assert names.listings == 1


def test_kept_listings_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    names = FolderNames(max_folders=2)
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
    for folder in (folders[0], folders[1], folders[0], folders[2], folders[0]):
        names.existing(folder)
    assert names.listings == 3, "a kept, b kept, then c pushes b out; a stays the most recent"
    names.existing(folders[1])
    assert names.listings == 4


def test_a_missing_folder_has_no_names_and_is_not_kept(tmp_path: Path) -> None:
    names = FolderNames()
    assert names.existing(tmp_path / "new") == set()
    names.add(tmp_path / "new", "cat.png")
    assert names.listings == 0
