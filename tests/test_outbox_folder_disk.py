"""An outbox whose share was unmounted is waited for; one deleted from a mounted disk is made again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fooocusd.errors import ShareGone
from fooocusd.outbox.folder_disk import FolderDisk
from tests.mounts_faked import FakeMount


def test_a_folder_on_the_root_filesystem_is_never_waited_for(tmp_path: Path) -> None:
    disk = FolderDisk(tmp_path / "not-yet")
    assert disk.mount is None or os.path.ismount(disk.mount)
    disk.check()


def test_a_share_unmounted_leaving_its_bare_mount_point_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nas = tmp_path / "nas"
    (nas / "renders").mkdir(parents=True)
    share = FakeMount(monkeypatch, nas)
    disk = FolderDisk(nas / "renders")
    assert disk.mount == nas

    share.unmount()
    with pytest.raises(ShareGone) as caught:
        disk.check()
    assert caught.value.message == f"{nas / 'renders'} is on {nas}, which is no longer mounted"
    assert f"`mount {nas}`" in caught.value.hint

    share.mount()
    disk.check()


def test_a_folder_deleted_from_a_disk_still_mounted_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nas = tmp_path / "nas"
    (nas / "renders").mkdir(parents=True)
    FakeMount(monkeypatch, nas)
    disk = FolderDisk(nas / "renders")
    (nas / "renders").rmdir()

    disk.check()  # no error: the worker makes it again


def test_a_share_mounted_after_the_start_is_written_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nas = tmp_path / "nas"
    (nas / "renders").mkdir(parents=True)
    disk = FolderDisk(nas / "renders")  # fooocusd started before the share was mounted
    FakeMount(monkeypatch, nas)

    disk.check()
