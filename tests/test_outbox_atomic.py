from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fooocusd.errors import TransientError
from fooocusd.outbox import atomic
from fooocusd.outbox.atomic import cleanup_stale_temps, publish_bytes, temp_path_for


def _visible_and_temp(folder: Path) -> tuple[list[str], list[str]]:
    names = sorted(entry.name for entry in folder.iterdir())
    return [n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".fooocusd-")]


def _raise_oserror(code: int):
    def failing(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return failing


def test_publish_writes_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    final = publish_bytes(tmp_path / "cat.png", b"image bytes")

    assert final.read_bytes() == b"image bytes"
    assert _visible_and_temp(tmp_path) == (["cat.png"], [])


def test_temp_file_is_hidden_and_final_name_appears_only_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_while_writing: list[tuple[list[str], list[str]]] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen_while_writing.append(_visible_and_temp(tmp_path))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spying_fsync)
    publish_bytes(tmp_path / "cat.png", b"data")

    [(visible, temps)] = seen_while_writing
    assert visible == []
    assert len(temps) == 1
    assert temps[0].startswith(".fooocusd-cat.png.") and temps[0].endswith(".tmp")


def test_temp_name_stays_within_filesystem_name_limits_for_long_names(tmp_path: Path) -> None:
    temp = temp_path_for(tmp_path / ("é" * 200 + ".png"))

    assert temp.name.startswith(".fooocusd-")
    assert len(temp.name.encode("utf-8")) <= 255


def test_publish_never_clobbers_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "cat.png"
    existing.write_bytes(b"precious")

    with pytest.raises(FileExistsError):
        publish_bytes(existing, b"new")

    assert existing.read_bytes() == b"precious"
    assert _visible_and_temp(tmp_path) == (["cat.png"], [])


def test_publish_with_overwrite_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    publish_bytes(target, b"new", overwrite=True)

    assert target.read_bytes() == b"new"
    assert _visible_and_temp(tmp_path) == (["state.json"], [])


def test_falls_back_to_checked_rename_where_hard_links_are_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic.os, "link", _raise_oserror(errno.EPERM))

    publish_bytes(tmp_path / "a.png", b"first")
    with pytest.raises(FileExistsError):
        publish_bytes(tmp_path / "a.png", b"second")

    assert (tmp_path / "a.png").read_bytes() == b"first"
    assert _visible_and_temp(tmp_path) == (["a.png"], [])


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0, 0o666)])
def test_published_file_mode_follows_umask_and_is_never_executable(
    tmp_path: Path, umask: int, expected: int
) -> None:
    final = publish_bytes(tmp_path / "cat.png", b"x", umask=umask)

    mode = stat.S_IMODE(final.stat().st_mode)
    assert mode == expected
    assert mode & 0o111 == 0


def test_publish_creates_missing_parent_folders_and_syncs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real_fsync_folder = atomic.fsync_folder

    def recording_fsync_folder(folder: Path) -> None:
        synced.append(folder)
        real_fsync_folder(folder)

    monkeypatch.setattr(atomic, "fsync_folder", recording_fsync_folder)
    final = publish_bytes(tmp_path / "a" / "b" / "cat.png", b"x")

    assert final.read_bytes() == b"x"
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("call", "code"), [("write", errno.ENOSPC), ("fsync", errno.ENOSPC), ("fsync", errno.EDQUOT)]
)
def test_disk_full_raises_transient_error_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    monkeypatch.setattr(atomic.os, call, _raise_oserror(code))
    final = tmp_path / "cat.png"

    with pytest.raises(TransientError) as caught:
        publish_bytes(final, b"x" * 1000)

    assert caught.value.message == f"disk full while writing {final}"
    assert caught.value.hint
    assert _visible_and_temp(tmp_path) == ([], [])


def test_permission_denied_is_explained_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic.os, "open", _raise_oserror(errno.EACCES))

    with pytest.raises(TransientError) as caught:
        publish_bytes(tmp_path / "cat.png", b"x")

    assert "permission denied" in caught.value.message
    assert "outbox" in caught.value.hint


def test_folder_fsync_refused_by_network_filesystem_is_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync_files_only(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync_files_only)

    assert publish_bytes(tmp_path / "cat.png", b"x").read_bytes() == b"x"


def test_failure_after_linking_takes_the_new_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def folder_fsync_fails(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", folder_fsync_fails)
    (tmp_path / "other.png").write_bytes(b"")

    with pytest.raises(TransientError, match="Input/output error"):
        publish_bytes(tmp_path / "cat.png", b"x")

    assert _visible_and_temp(tmp_path) == (["other.png"], [])


def test_cleanup_removes_only_stale_fooocusd_temp_files(tmp_path: Path) -> None:
    ours_old = tmp_path / ".fooocusd-cat.png.1a2b3c4d.tmp"
    ours_fresh = tmp_path / ".fooocusd-dog.png.5e6f7a8b.tmp"
    somebody_elses = tmp_path / ".syncthing.cat.png.tmp"
    image = tmp_path / "cat.png"
    for path in (ours_old, ours_fresh, somebody_elses, image):
        path.write_bytes(b"x")
    os.utime(ours_old, (1000.0, 1000.0))
    os.utime(ours_fresh, (1950.0, 1950.0))

    removed = cleanup_stale_temps(tmp_path, min_age_seconds=60, clock=lambda: 2000.0)

    assert removed == [ours_old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ours_fresh.name, somebody_elses.name, image.name]
    )


def test_cleanup_removes_this_instances_young_temps_but_not_another_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "_temp_owner", "")
    atomic.set_temp_owner("abc123")
    mine = temp_path_for(tmp_path / "cat.png")
    atomic.set_temp_owner("def456")
    theirs = temp_path_for(tmp_path / "dog.png")
    atomic.set_temp_owner("")
    untagged = temp_path_for(tmp_path / "owl.png")
    for path in (mine, theirs, untagged):
        path.write_bytes(b"x")
    assert atomic.temp_owner_of(mine.name) == "abc123" and atomic.temp_owner_of(untagged.name) == ""

    removed = cleanup_stale_temps(tmp_path, min_age_seconds=3600, own_tag="abc123")

    assert removed == [mine]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, untagged.name])


def test_cleanup_of_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert cleanup_stale_temps(tmp_path / "nope") == []


def test_configured_umask_wins_over_a_stricter_process_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        final = publish_bytes(tmp_path / "shared" / "cat.png", b"x", umask=0o022)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(final.stat().st_mode) == 0o644
    assert stat.S_IMODE(final.parent.stat().st_mode) == 0o755


def test_start_up_removes_crash_leftover_temps_in_every_subfolder_and_spares_other_daemons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fooocusd.journal import Journal
    from fooocusd.service.folders import Folders
    from fooocusd.service.reconcile import instance_tag, reconcile
    from fooocusd.settings import PathsSettings

    monkeypatch.setattr(atomic, "_temp_owner", "")
    paths = PathsSettings(
        inbox=tmp_path / "inbox",
        outbox=tmp_path / "outbox",
        done=tmp_path / "done",
        failed=tmp_path / "failed",
        state=tmp_path / "state",
    )
    folders = Folders.from_paths(paths.resolved())
    folders.state.mkdir(parents=True)
    atomic.set_temp_owner(instance_tag(folders.state))
    mine = [
        temp_path_for(folders.outbox / "portraits" / "2026" / "cat.png"),
        temp_path_for(folders.done / "a.txt"),
    ]
    atomic.set_temp_owner("other1")
    theirs = temp_path_for(folders.outbox / "portraits" / "dog.png")
    kept = [folders.outbox / "portraits" / "2026" / "cat.png", theirs]
    for path in [*mine, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    with Journal.open(folders.journal_db, owner="test") as journal:
        reconcile(journal, folders)

    assert [path.exists() for path in mine] == [False, False]
    assert all(path.exists() for path in kept)
