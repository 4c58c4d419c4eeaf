"""Folders under a disk or share that /etc/fstab lists but that is not mounted.

Such a folder is on the bare mount point, on the local disk: what fooocusd wrote there would fill
that disk and vanish under the share once it is mounted. systemd units order the start after the
mounts (``RequiresMountsFor=``); this catches a start by hand, and ``doctor`` reports it.

Only the entries that come and go count: network and FUSE shares, and disks marked ``noauto``,
``nofail``, ``user`` or automounted (removable). A container's /etc/fstab often lists the host's
local disks, which are not mounted inside it; those must not stop a start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fooocusd.intake.mounts import polling_reason

FSTAB = Path("/etc/fstab")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # fstab writes a space in a path as \040
_COMES_AND_GOES = frozenset({"noauto", "nofail", "user", "users", "x-systemd.automount"})


def fstab_mount_points(fstab: Path | None = None) -> list[Path]:
    """The mount points of shares and removable disks /etc/fstab (or ``fstab``) lists."""
    try:
        lines = (fstab or FSTAB).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    points: list[Path] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#"):
            continue
        fs_type, options = fields[2], set(fields[3].split(","))
        if not polling_reason(fs_type) and not options & _COMES_AND_GOES:
            continue  # a local disk that is always there
        where = _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[1])
        if where.startswith("/") and where != "/":
            points.append(Path(where))
    return points


def unmounted_mount_above(folder: Path, fstab: Path | None = None) -> Path | None:
    """The deepest mount point /etc/fstab lists at or above ``folder`` that is not mounted now."""
    above = [point for point in fstab_mount_points(fstab) if folder == point or point in folder.parents]
    for point in sorted(above, key=lambda point: len(point.parts), reverse=True):
        if not os.path.ismount(point):
            return point
    return None
