from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.intake.mounts import (
    Mount,
    decide_polling,
    mount_of,
    mounts_below,
    parse_mountinfo,
    polling_reason,
    read_mounts,
)

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /srv rw,relatime shared:2 - xfs /dev/sdb1 rw
31 30 0:41 / /srv/nas rw,relatime shared:3 - nfs4 nas:/export rw,vers=4.2
32 22 0:42 / /home/me/cloud rw,nosuid shared:4 master:9 - fuse.rclone gdrive: rw,user_id=1000
33 22 0:43 / /mnt/my\\040share rw - cifs //host/share rw
34 22 0:44 / /mnt/usb rw - fuseblk /dev/sdc1 rw
35 22 0:45 / /mnt/over rw - nfs srv:/a rw
36 22 0:46 / /mnt/over rw - ext4 /dev/sdd1 rw
garbage line without separator
"""


def test_mountinfo_is_parsed_including_optional_fields_and_escaped_spaces() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 8
    assert Mount(Path("/mnt/my share"), "cifs", "//host/share") in mounts
    assert Mount(Path("/home/me/cloud"), "fuse.rclone", "gdrive:") in mounts


def test_longest_mount_point_prefix_wins_and_later_mount_hides_earlier() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of(Path("/srv/nas/inbox"), mounts).fs_type == "nfs4"
    assert mount_of(Path("/srv/nasty"), mounts).fs_type == "xfs"
    assert mount_of(Path("/tmp/x"), mounts).fs_type == "ext4"
    assert mount_of(Path("/mnt/over/inbox"), mounts).fs_type == "ext4"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/nas/inbox", True),
        ("/home/me/cloud/inbox", True),
        ("/mnt/my share/inbox", True),
        ("/srv/inbox", False),
        ("/mnt/usb/inbox", False),
    ],
)
def test_auto_polls_network_and_fuse_mounts_only(path: str, expected: bool) -> None:
    decision = decide_polling(Path(path), "auto", parse_mountinfo(MOUNTINFO))
    assert decision.use_polling is expected
    assert decision.reason


@pytest.mark.parametrize(
    "fs_type",
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "fuse.rclone",
        "9p",
        "virtiofs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "davfs",
        "fuse",
    ],
)
def test_network_and_fuse_types_need_polling(fs_type: str) -> None:
    assert polling_reason(fs_type)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuseblk"])
def test_local_types_use_native_events(fs_type: str) -> None:
    assert polling_reason(fs_type) == ""


def test_always_and_never_override_the_filesystem_type() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert decide_polling(Path("/srv/inbox"), "always", mounts).use_polling
    assert not decide_polling(Path("/srv/nas/inbox"), "never", mounts).use_polling


def test_unknown_filesystem_type_keeps_native_events() -> None:
    decision = decide_polling(Path("/x"), "auto", [])
    assert not decision.use_polling
    assert decision.fs_type is None


def test_submounts_of_the_inbox_are_listed() -> None:
    below = mounts_below(Path("/srv"), parse_mountinfo(MOUNTINFO))
    assert [m.mount_point for m in below] == [Path("/srv/nas")]


def test_live_mount_table_knows_the_filesystem_of_a_temp_folder(tmp_path: Path) -> None:
    # fooocusd targets Linux, where /proc/self/mountinfo always exists.
    assert read_mounts(), "the live mount table is empty"
    assert decide_polling(tmp_path, "auto").fs_type is not None
