"""A name typed in one Unicode normalisation finds the file a Mac wrote in the other."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from fooocusd.name_spelling import comparable, spelled_on_disk

TYPED = unicodedata.normalize("NFC", "café")  # one character for é, as keyboards write it
FROM_A_MAC = unicodedata.normalize("NFD", "café")  # e + a combining accent, as macOS writes it


def test_the_two_spellings_differ_on_disk_but_compare_alike() -> None:
    assert TYPED != FROM_A_MAC
    assert comparable(TYPED) == comparable(FROM_A_MAC)


def test_a_typed_name_finds_the_file_a_mac_wrote(tmp_path: Path) -> None:
    on_disk = tmp_path / f"{FROM_A_MAC}.png"
    on_disk.write_bytes(b"png")
    assert spelled_on_disk(tmp_path / f"{TYPED}.png") == on_disk


def test_each_folder_on_the_way_is_found_in_its_own_spelling(tmp_path: Path) -> None:
    folder = tmp_path / f"{FROM_A_MAC}-photos" / "2024"
    folder.mkdir(parents=True)
    (folder / f"{TYPED}.png").write_bytes(b"png")
    found = spelled_on_disk(tmp_path / f"{TYPED}-photos" / "2024" / f"{FROM_A_MAC}.png")
    assert found == folder / f"{TYPED}.png"
    assert found.is_file()


def test_a_relative_path_stays_relative(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path(f"{FROM_A_MAC}.png").write_bytes(b"png")
    assert spelled_on_disk(Path(f"{TYPED}.png")) == Path(f"{FROM_A_MAC}.png")


def test_a_name_that_is_there_as_written_or_nowhere_is_given_back_unchanged(tmp_path: Path) -> None:
    (tmp_path / f"{TYPED}.png").write_bytes(b"typed")
    (tmp_path / f"{FROM_A_MAC}.png").write_bytes(b"from a mac")
    assert spelled_on_disk(tmp_path / f"{TYPED}.png") == tmp_path / f"{TYPED}.png"
    assert spelled_on_disk(tmp_path / f"{FROM_A_MAC}.png") == tmp_path / f"{FROM_A_MAC}.png"
    assert spelled_on_disk(tmp_path / "naïve.png") == tmp_path / "naïve.png"
    assert spelled_on_disk(tmp_path / "plain.png") == tmp_path / "plain.png"


def test_a_name_written_in_other_letter_case_finds_the_only_file_so_named(tmp_path: Path) -> None:
    (tmp_path / "Refs").mkdir()
    (tmp_path / "Refs" / "Cat.PNG").write_bytes(b"png")
    assert spelled_on_disk(tmp_path / "refs" / "cat.png") == tmp_path / "Refs" / "Cat.PNG"


def test_letter_case_does_not_choose_between_two_files(tmp_path: Path) -> None:
    (tmp_path / "Cat.png").write_bytes(b"one")
    (tmp_path / "CAT.png").write_bytes(b"two")
    assert spelled_on_disk(tmp_path / "cat.png") == tmp_path / "cat.png"
    assert spelled_on_disk(tmp_path / "CAT.png") == tmp_path / "CAT.png"


def test_letter_case_can_be_told_to_count(tmp_path: Path) -> None:
    (tmp_path / "Cat.png").write_bytes(b"png")
    (tmp_path / f"{FROM_A_MAC}.png").write_bytes(b"png")
    assert spelled_on_disk(tmp_path / "cat.png", any_case=False) == tmp_path / "cat.png"
    assert spelled_on_disk(tmp_path / f"{TYPED}.png", any_case=False) == tmp_path / f"{FROM_A_MAC}.png"
