"""What still waits in the inbox (``intake/waiting.py``), as ``fooocusd status`` shows it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from fooocusd.intake.waiting import NAMES_SHOWN, inbox_waiting


def _write(inbox: Path, relpath: str, content: bytes = b"") -> None:
    path = inbox / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_counts_what_intake_would_handle_and_names_the_empty_files(tmp_path: Path) -> None:
    _write(tmp_path, "a.txt", b"a cat\n")
    _write(tmp_path, "b.txt")
    _write(tmp_path, "portrait/c.toml")
    _write(tmp_path, "notes.pdf", b"%PDF")  # refused once picked up: it still waits now
    _write(tmp_path, ".hidden.txt")
    _write(tmp_path, "d.txt.part")
    _write(tmp_path, ".stversions/e.txt")
    _write(tmp_path, "drafts/f.txt")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")

    waiting = inbox_waiting(tmp_path, ["drafts"])

    assert waiting.files == 4
    assert waiting.empty == ["b.txt", "portrait/c.toml"] and waiting.empty_count == 2


def test_names_the_job_files_an_editor_has_open(tmp_path: Path) -> None:
    _write(tmp_path, "cat.txt", b"a cat, a draft\n")
    _write(tmp_path, ".cat.txt.swp", b"b0VIM 9.1")
    _write(tmp_path, "portrait/owl.toml", b'prompt = "an owl"\n')
    _write(tmp_path, "portrait/.~lock.owl.toml#", b"someone,host")
    _write(tmp_path, "fox.txt", b"a fox\n")

    waiting = inbox_waiting(tmp_path)

    assert waiting.files == 3
    assert waiting.in_editor == [
        "cat.txt in vim or nano (.cat.txt.swp)",
        "portrait/owl.toml in LibreOffice (.~lock.owl.toml#)",
    ]


def test_names_only_the_first_empty_files_and_counts_them_all(tmp_path: Path) -> None:
    for index in range(NAMES_SHOWN + 3):
        _write(tmp_path, f"job-{index:02}.txt")

    waiting = inbox_waiting(tmp_path)

    assert waiting.empty_count == NAMES_SHOWN + 3 and len(waiting.empty) == NAMES_SHOWN


def test_a_missing_inbox_has_nothing_waiting(tmp_path: Path) -> None:
    assert inbox_waiting(tmp_path / "not-there").record() == {
        "files": 0,
        "empty": [],
        "empty_count": 0,
        "in_editor": [],
    }


def test_an_empty_file_whose_name_is_not_utf8_is_named_with_its_stray_bytes_escaped(tmp_path: Path) -> None:
    (Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.txt"))).write_bytes(b"")

    waiting = inbox_waiting(tmp_path)

    assert waiting.empty == ["caf\\xe9.txt"]
    json.dumps(waiting.record(), ensure_ascii=False).encode("utf-8")  # printable and storable as it is


def test_a_folder_that_cannot_be_listed_is_said_once_with_how_to_fix_it(
    tmp_path: Path, logged: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    _write(tmp_path, "a.txt", b"a cat\n")
    real_scandir = os.scandir

    def scandir(folder):  # type: ignore[no-untyped-def]  # as for a folder another user made 700
        if Path(folder) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real_scandir(folder)

    monkeypatch.setattr(os, "scandir", scandir)
    for _ in range(3):  # three rescans
        assert inbox_waiting(tmp_path).files == 1

    said = [line for line in logged if line.startswith("cannot look in")]
    assert len(said) == 1 and f"`chmod a+rx {locked}`" in said[0]
