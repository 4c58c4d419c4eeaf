"""A folder under a disk or share /etc/fstab lists but that is not mounted is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.errors import ConfigError
from fooocusd.service import fstab_mounts
from fooocusd.service.doctor import run_checks
from fooocusd.service.folders import prepare_folders
from fooocusd.service.fstab_mounts import fstab_mount_points, unmounted_mount_above
from fooocusd.settings import Settings
from tests.daemon_harness import Sandbox
from tests.mounts_faked import FakeMount


def _fstab(tmp_path: Path, *mount_points: str, local: str = "/home") -> Path:
    lines = ["# /etc/fstab: static file system information.", "UUID=1234 / ext4 defaults 0 1"]
    lines += ["/swapfile none swap sw 0 0", "proc /proc proc defaults 0 0"]
    lines += [f"UUID=5678 {local} ext4 defaults 0 2"]  # a local disk: always there, never counted
    lines += [f"nas:/export {point} nfs defaults,_netdev 0 0" for point in mount_points]
    path = tmp_path / "fstab"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_shares_and_removable_disks_are_read_with_escaped_spaces_and_local_disks_are_not(
    tmp_path: Path,
) -> None:
    fstab = _fstab(tmp_path, "/mnt/my\\040nas", "/srv/renders")
    with fstab.open("a") as more:
        more.write("UUID=9abc /media/usb exfat defaults,nofail 0 0\n")
        more.write("sshfs#me@host:/ /mnt/host fuse.sshfs defaults 0 0\n")
    assert fstab_mount_points(fstab) == [
        Path("/mnt/my nas"),
        Path("/srv/renders"),
        Path("/media/usb"),
        Path("/mnt/host"),
    ]


def test_a_local_disk_listed_but_not_mounted_as_in_a_container_does_not_count(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert unmounted_mount_above(data / "outbox", _fstab(tmp_path, local=str(data))) is None


def test_a_folder_under_a_listed_mount_point_that_is_not_mounted_is_found(tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    nas.mkdir()
    fstab = _fstab(tmp_path, str(nas))

    assert unmounted_mount_above(nas / "outbox", fstab) == nas
    assert unmounted_mount_above(tmp_path / "elsewhere", fstab) is None


def test_a_folder_under_a_mounted_share_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nas = tmp_path / "nas"
    nas.mkdir()
    FakeMount(monkeypatch, nas)

    assert unmounted_mount_above(nas / "outbox", _fstab(tmp_path, str(nas))) is None


def test_the_daemon_refuses_to_start_with_its_outbox_on_a_bare_mount_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nas = tmp_path / "nas"
    nas.mkdir()
    monkeypatch.setattr(fstab_mounts, "FSTAB", _fstab(tmp_path, str(nas)))
    settings = Settings.model_validate(
        {"paths": {"inbox": tmp_path / "inbox", "outbox": nas / "outbox", "state": tmp_path / "state"}}
    )

    with pytest.raises(ConfigError) as caught:
        prepare_folders(settings)

    outbox = nas / "outbox"
    said = caught.value.message
    assert f"the outbox folder {outbox} is under {nas}, which /etc/fstab lists but is not mounted" in said
    assert f"`mount {nas}`" in caught.value.hint
    assert not (nas / "outbox").exists(), "nothing was made on the bare mount point"


def test_doctor_fails_a_folder_on_a_bare_mount_point(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fstab_mounts, "FSTAB", _fstab(tmp_path, str(sandbox.outbox.parent)))

    checks = {check.name: check for check in run_checks(sandbox.settings())}

    assert checks["outbox folder"].level == "fail"
    assert "which /etc/fstab lists but is not mounted: mount it first" in checks["outbox folder"].detail
