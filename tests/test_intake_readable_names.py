"""Inbox names that are not valid UTF-8 get a readable name in place, byte by byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fooocusd.intake.readable_names import is_readable, readable, rename_readable, shown, why_unreadable

LATIN1 = os.fsdecode(b"caf\xe9.txt")  # what os.listdir gives for a Latin-1 name


def test_a_latin1_name_is_not_readable_and_a_utf8_one_is() -> None:
    assert not is_readable(LATIN1)
    assert is_readable("café.txt")
    assert is_readable("dossier/été.txt")


def test_each_stray_byte_becomes_a_replacement_character_and_valid_utf8_is_kept() -> None:
    assert readable(LATIN1) == "caf\ufffd.txt"
    assert readable(os.fsdecode("été-".encode() + b"\xff\xfe.png")) == "été-\ufffd\ufffd.png"


def test_messages_show_the_stray_bytes_so_the_user_can_find_the_file() -> None:
    assert shown(LATIN1) == "caf\\xe9.txt"
    assert shown("café.txt") == "café.txt"


def test_a_file_is_renamed_in_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / LATIN1).write_text("a cat")

    renamed = rename_readable(tmp_path, f"sub/{LATIN1}")

    assert renamed == tmp_path / "sub" / "caf\ufffd.txt"
    assert renamed.read_text() == "a cat"
    assert os.listdir(tmp_path / "sub") == ["caf\ufffd.txt"]


def test_the_topmost_unreadable_folder_is_renamed_with_its_files(tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(b"\xe9t\xe9")
    folder.mkdir()
    (folder / LATIN1).write_text("a cat")

    renamed = rename_readable(tmp_path, f"{folder.name}/{LATIN1}")

    assert renamed == tmp_path / "\ufffdt\ufffd"
    assert os.listdir(renamed) == [LATIN1], "the file itself is renamed when it is seen again"


def test_a_taken_readable_name_gets_the_next_free_variant(tmp_path: Path) -> None:
    (tmp_path / "caf\ufffd.txt").write_text("already here")
    (tmp_path / LATIN1).write_text("a cat")

    renamed = rename_readable(tmp_path, LATIN1)

    assert renamed.name == "caf\ufffd-1.txt"
    assert (tmp_path / "caf\ufffd.txt").read_text() == "already here"


def test_a_file_gone_before_its_rename_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rename_readable(tmp_path, LATIN1)


def test_a_name_with_a_control_character_is_renamed_and_shown_on_one_line() -> None:
    name = "fake\nERROR done.txt"  # would forge a log line
    assert not is_readable(name) and not is_readable("tab\there.txt")
    assert readable(name) == "fake\ufffdERROR done.txt"
    assert shown(name) == "fake\\nERROR done.txt"
    assert "control character" in why_unreadable(name) and "UTF-8" in why_unreadable(LATIN1)
