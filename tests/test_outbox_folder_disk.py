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


def _renders_on_a_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, FakeMount, FolderDisk]:
    """``nas/renders``, with ``nas`` mounted when fooocusd notes its disk."""
    nas = tmp_path / "nas"
    (nas / "renders").mkdir(parents=True)
    share = FakeMount(monkeypatch, nas)
    return nas, share, FolderDisk(nas / "renders")


def test_a_share_unmounted_leaving_its_bare_mount_point_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nas, share, disk = _renders_on_a_share(tmp_path, monkeypatch)
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
    nas, _, disk = _renders_on_a_share(tmp_path, monkeypatch)
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
