"""An outbox whose disk or share went away is waited for; one deleted from its disk is made again."""

from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.errors import ShareGone
from fooocusd.outbox.folder_disk import FolderDisk
from tests.mounts_faked import on_another_disk


def test_an_outbox_on_its_own_disk_passes(tmp_path: Path) -> None:
    FolderDisk(tmp_path).check()


def test_an_outbox_deleted_from_a_disk_still_there_is_made_again(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    disk = FolderDisk(outbox)
    outbox.rmdir()

    disk.check()  # no error: the worker makes it again


def test_a_bare_mount_point_where_the_outbox_was_is_a_share_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "nas"
    outbox.mkdir()
    disk = FolderDisk(outbox)
    on_another_disk(monkeypatch, outbox)

    with pytest.raises(ShareGone) as caught:
        disk.check()
    assert "no longer on the disk it was on at start" in caught.value.message
    assert f"findmnt -T {outbox}" in caught.value.hint


def test_an_outbox_gone_with_its_disk_is_a_share_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "nas"
    outbox = mount / "renders"
    outbox.mkdir(parents=True)
    disk = FolderDisk(outbox)
    outbox.rmdir()
    on_another_disk(monkeypatch, mount)  # the mount point is back to the local disk, empty

    with pytest.raises(ShareGone, match="is gone, along with the disk or share it was on"):
        disk.check()


def test_an_outbox_missing_at_start_is_never_checked(tmp_path: Path) -> None:
    FolderDisk(tmp_path / "not-yet").check()
