"""Choose native file events or polling, per mount.

Native events (inotify and friends) only see changes made through the local kernel. On network
and FUSE filesystems, writes from other machines (or from the remote side of rclone/sshfs, or
the host side of a VM/container share) produce no events at all, so those mounts must be polled.
We read the filesystem *type name* from ``/proc/self/mountinfo`` for the longest mount point
that contains the path. Where that file does not exist (macOS, BSD) the type is unknown and
``auto`` keeps native events; the watcher's periodic rescan still catches everything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PollingMode = Literal["auto", "always", "never"]
MOUNTINFO = Path("/proc/self/mountinfo")

# Exact type names that never deliver events for remote changes.
POLLED_FS_TYPES: dict[str, str] = {
    "nfs": "NFS network share",
    "nfs4": "NFS network share",
    "cifs": "SMB/CIFS network share",
    "smb": "SMB network share",
    "smb2": "SMB network share",
    "smb3": "SMB network share",
    "smbfs": "SMB network share",
    "ncpfs": "NetWare network share",
    "9p": "9p share (WSL, VM or container host folder)",
    "v9fs": "9p share (WSL, VM or container host folder)",
    "drvfs": "WSL Windows drive",
    "virtiofs": "virtiofs share (VM or container host folder)",
    "vboxsf": "VirtualBox shared folder",
    "vmhgfs": "VMware shared folder",
    "prl_fs": "Parallels shared folder",
    "fakeowner": "Docker Desktop host folder",
    "grpcfuse": "Docker Desktop host folder",
    "osxfs": "Docker Desktop host folder",
    "ceph": "CephFS cluster filesystem",
    "glusterfs": "GlusterFS cluster filesystem",
    "lustre": "Lustre cluster filesystem",
    "gpfs": "GPFS cluster filesystem",
    "beegfs": "BeeGFS cluster filesystem",
    "ocfs2": "OCFS2 cluster filesystem",
    "gfs2": "GFS2 cluster filesystem",
    "afs": "AFS network filesystem",
    "davfs": "WebDAV mount",
    "coda": "Coda network filesystem",
    "fuse": "FUSE filesystem",
}
# Type-name prefixes: FUSE filesystems report "fuse.<program>" (fuse.rclone, fuse.sshfs, ...).
POLLED_FS_PREFIXES: dict[str, str] = {
    "fuse.": "FUSE filesystem",
    "nfs": "NFS network share",
}
# FUSE types that sit on a local block device (ntfs-3g, exfat-fuse): local writes give events.
NATIVE_FUSE_TYPES: frozenset[str] = frozenset({"fuseblk"})

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: Path
    fs_type: str
    source: str


@dataclass(frozen=True)
class PollingDecision:
    use_polling: bool
    fs_type: str | None
    reason: str


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5)). Lines that do not parse are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        left_fields, right_fields = left.split(), right.split()
        if len(left_fields) < 5 or len(right_fields) < 2:
            continue
        mounts.append(
            Mount(
                mount_point=Path(_unescape(left_fields[4])),
                fs_type=right_fields[0],
                source=_unescape(right_fields[1]),
            )
        )
    return mounts


def read_mounts(mountinfo: Path = MOUNTINFO) -> list[Mount]:
    """The current mount table, or an empty list where mountinfo is not available."""
    try:
        return parse_mountinfo(mountinfo.read_text(encoding="utf-8", errors="surrogateescape"))
    except OSError:
        return []


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path``: the longest mount point that contains it (the later entry
    wins on equal mount points, because a later mount hides an earlier one at the same place)."""
    real = Path(os.path.realpath(path))
    best: Mount | None = None
    for mount in mounts:
        if real.is_relative_to(mount.mount_point) and (
            best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts)
        ):
            best = mount
    return best


def mounts_below(path: Path, mounts: list[Mount]) -> list[Mount]:
    """Mounts strictly inside ``path`` (sub-mounts of the inbox), last entry per mount point."""
    real = Path(os.path.realpath(path))
    by_point: dict[Path, Mount] = {}
    for mount in mounts:
        if mount.mount_point != real and mount.mount_point.is_relative_to(real):
            by_point[mount.mount_point] = mount
    return list(by_point.values())


def polling_reason(fs_type: str) -> str:
    """Why this filesystem type must be polled, or '' when native events work on it."""
    name = fs_type.lower()
    if name in NATIVE_FUSE_TYPES:
        return ""
    if name in POLLED_FS_TYPES:
        return POLLED_FS_TYPES[name]
    for prefix, reason in POLLED_FS_PREFIXES.items():
        if name.startswith(prefix):
            return reason
    return ""


def decide_polling(
    path: Path, polling: PollingMode = "auto", mounts: list[Mount] | None = None
) -> PollingDecision:
    """Whether ``path`` must be watched by polling. ``mounts`` defaults to the live mount table."""
    mount = mount_of(path, read_mounts() if mounts is None else mounts)
    fs_type = mount.fs_type if mount else None
    if polling == "always":
        return PollingDecision(True, fs_type, "intake.polling is 'always'")
    if polling == "never":
        return PollingDecision(False, fs_type, "intake.polling is 'never'")
    if fs_type is None:
        return PollingDecision(False, None, "filesystem type unknown; using native events")
    reason = polling_reason(fs_type)
    if reason:
        return PollingDecision(True, fs_type, f"{reason} ({fs_type}) gives no events for remote changes")
    return PollingDecision(False, fs_type, f"local filesystem ({fs_type}); using native events")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134.
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
