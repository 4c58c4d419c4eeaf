from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import pytest

from fooocusd.intake import claim
from fooocusd.intake.claim import fsync_dir, move_durably, move_to_unique, unique_destination


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    state.mkdir()
    return inbox, state


def simulate_other_filesystem(monkeypatch: pytest.MonkeyPatch, inbox: Path) -> list[str]:
    """os.rename out of the inbox fails with EXDEV, as it would across mounts."""
    real_rename = os.rename
    calls: list[str] = []

    def rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        calls.append(str(src))
        if Path(src).parent == inbox:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_same_filesystem_move_is_a_rename_keeping_the_inode(folders: tuple[Path, Path]) -> None:
    inbox, state = folders
    src = inbox / "cat.png"
    src.write_bytes(b"png data")
    inode = src.stat().st_ino
    move_durably(src, state / "job1__cat.png")
    assert not src.exists()
    assert (state / "job1__cat.png").stat().st_ino == inode


def test_cross_filesystem_move_copies_fsyncs_then_removes_the_source(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)
    src = inbox / "cat.png"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    os.utime(src, ns=(1_000_000_000, 1_234_567_890_000))
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])

    move_durably(src, state / "cat.png")

    assert not src.exists()
    assert (state / "cat.png").read_bytes() == payload
    assert (state / "cat.png").stat().st_mtime_ns == 1_234_567_890_000
    assert sorted(p.name for p in state.iterdir()) == ["cat.png"]  # no temp left behind
    assert len(fsynced) >= 3  # the copy, the destination folder, the source folder


def test_cross_filesystem_move_that_fails_midway_leaves_no_partial_and_keeps_the_source(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)
    src = inbox / "cat.png"
    src.write_bytes(b"x" * 100_000)
    copied: list[int] = []
    real_copy = shutil.copyfileobj

    def copy_then_fail(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:
        real_copy(reader, writer, length)
        copied.append(writer.tell())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claim.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="No space"):
        move_durably(src, state / "cat.png")
    assert copied == [100_000]  # the temp copy was fully written before the failure
    assert list(state.iterdir()) == []
    assert src.read_bytes() == b"x" * 100_000


def test_crash_before_publish_leaves_only_a_hidden_temp_never_a_partial_destination(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)
    src = inbox / "cat.png"
    src.write_bytes(b"y" * 50_000)

    class Crash(BaseException):
        pass

    def crash(*_args: object) -> None:
        raise Crash

    monkeypatch.setattr(claim, "_publish_no_clobber", crash)
    with pytest.raises(Crash):
        move_durably(src, state / "cat.png")
    assert not (state / "cat.png").exists()
    assert src.exists()


def test_cross_filesystem_move_without_hard_links_still_publishes_atomically(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)

    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    src = inbox / "p.toml"
    src.write_text('prompt = "a cat"')
    move_durably(src, state / "p.toml")
    assert (state / "p.toml").read_text() == 'prompt = "a cat"'
    assert [p.name for p in state.iterdir()] == ["p.toml"]


def test_move_never_overwrites_an_existing_destination(folders: tuple[Path, Path]) -> None:
    inbox, state = folders
    (inbox / "a.txt").write_text("new")
    (state / "a.txt").write_text("old")
    with pytest.raises(FileExistsError):
        move_durably(inbox / "a.txt", state / "a.txt")
    assert (state / "a.txt").read_text() == "old"
    assert (inbox / "a.txt").read_text() == "new"


def test_cross_filesystem_move_refuses_a_fifo_without_opening_it(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)
    os.mkfifo(inbox / "pipe.png")
    with pytest.raises(OSError, match="regular files"):
        move_durably(inbox / "pipe.png", state / "pipe.png")
    assert list(state.iterdir()) == []


def test_unique_destination_keeps_the_extension_and_never_reuses_a_name(tmp_path: Path) -> None:
    assert unique_destination(tmp_path, "cat.png") == tmp_path / "cat.png"
    (tmp_path / "cat.png").write_bytes(b"1")
    (tmp_path / "cat-1.png").write_bytes(b"2")
    assert unique_destination(tmp_path, "cat.png") == tmp_path / "cat-2.png"
    (tmp_path / "README").write_text("x")
    assert unique_destination(tmp_path, "README") == tmp_path / "README-1"
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "nowhere")
    assert unique_destination(tmp_path, "dangling.txt") == tmp_path / "dangling-1.txt"


def test_unique_destination_after_a_long_run_of_the_same_name_is_the_next_one(tmp_path: Path) -> None:
    (tmp_path / "job.txt").write_text("0")
    for counter in range(1, 1000):
        (tmp_path / f"job-{counter}.txt").write_text(str(counter))
    checks: list[str] = []
    real_lexists = os.path.lexists

    def counting(path: str | os.PathLike[str]) -> bool:
        checks.append(str(path))
        return real_lexists(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os.path, "lexists", counting)
        assert unique_destination(tmp_path, "job.txt") == tmp_path / "job-1000.txt"
    assert len(checks) <= 25, "doubling, then bisecting: not one check per existing name"


def test_unique_destination_with_a_gap_returns_a_free_name(tmp_path: Path) -> None:
    for name in ("job.txt", "job-1.txt", "job-3.txt", "job-4.txt"):
        (tmp_path / name).write_text("x")
    found = unique_destination(tmp_path, "job.txt")
    assert found.name in {"job-2.txt", "job-5.txt"} and not found.exists()


def test_move_to_unique_picks_the_next_free_name(folders: tuple[Path, Path]) -> None:
    inbox, done = folders
    (done / "cat.png").write_bytes(b"older")
    (inbox / "cat.png").write_bytes(b"newer")
    assert move_to_unique(inbox / "cat.png", done) == done / "cat-1.png"
    assert (done / "cat.png").read_bytes() == b"older"
    assert (done / "cat-1.png").read_bytes() == b"newer"


def test_fsync_dir_works_on_a_real_folder(tmp_path: Path) -> None:
    fsync_dir(tmp_path)


def test_cross_filesystem_move_of_a_name_at_the_limit_uses_a_temp_name_that_fits(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, state = folders
    simulate_other_filesystem(monkeypatch, inbox)
    name = "é" * 123 + ".txt"  # 250 bytes: the temp name around it would be 269
    (inbox / name).write_text("a cat")

    move_durably(inbox / name, state / name)

    assert os.listdir(state) == [name]


def test_a_variant_of_a_long_name_is_cut_to_leave_room_for_its_error_file(tmp_path: Path) -> None:
    name = "x" * 240 + ".toml"
    (tmp_path / name).write_text("taken")

    variant = unique_destination(tmp_path, name)

    assert variant.name == "x" * 238 + "-1.toml"
    assert len(os.fsencode(variant.name + ".error.txt")) == 255
    variant.write_text("a cat")  # the name is allowed
    assert unique_destination(tmp_path, name).name == "x" * 238 + "-2.toml"


def test_a_name_too_long_for_an_error_file_beside_it_is_cut_to_fit(tmp_path: Path) -> None:
    name = "y" * 250 + ".txt"

    assert unique_destination(tmp_path, name).name == "y" * 241 + ".txt"
