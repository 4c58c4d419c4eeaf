"""Crash-safe publishing of one file: nobody ever sees a partial output.

Recipe (see the write-discipline notes in the project reference): write a hidden temp file in
the destination folder, fsync it, fix its mode, publish it under the final name in one step, then
fsync the folder so the new name survives a power cut.

Temp names are ``.fooocusd-<name>.<random>.tmp``: the leading dot hides them from our own intake
and from most sync tools; ``cleanup_stale_temps`` removes the ones a crash left behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from fooocusd.durable import fsync_folder
from fooocusd.errors import DiskFull, ShareGone, TransientError
from fooocusd.file_names import cut_to_bytes

TEMP_PREFIX = ".fooocusd-"
TEMP_SUFFIX = ".tmp"
# Room for the prefix, the random part and the suffix inside NAME_MAX (255 bytes).
_MAX_TEMP_STEM_BYTES = 200

# Errors from ``os.link`` that mean "this filesystem cannot hard-link", not "the name exists".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}
# Directory fsync is refused on some network filesystems; the data itself is already synced.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# What NFS, SMB and FUSE mounts (sshfs, rclone) answer when their server or connection is gone. Not
# EIO: a failing local disk says that too, and waiting would hide it.
_SHARE_GONE = {
    errno.ENOTCONN,
    errno.ESTALE,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
}


def file_mode(umask: int) -> int:
    """The mode an output gets: read/write as the umask allows, never executable."""
    return 0o666 & ~umask & ~0o111


_temp_owner = ""


def set_temp_owner(tag: str) -> None:
    """Mark this process's temp files with ``tag`` (one per state folder, so one per daemon instance).

    At start-up a daemon removes its own leftover temps at once, but leaves young temps of other
    instances sharing the outbox alone: they may be writing them right now.
    """
    global _temp_owner
    if tag and not tag.isalnum():
        raise ValueError(f"temp owner tag must be alphanumeric, got {tag!r}")
    _temp_owner = tag


def temp_owner_of(name: str) -> str:
    """The owner tag in a temp file name ('' for untagged temps)."""
    token = name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]
    return token.split("-", 1)[0] if "-" in token else ""


def temp_path_for(final: Path) -> Path:
    """A fresh hidden temp name beside ``final``."""
    stem = cut_to_bytes(final.name, _MAX_TEMP_STEM_BYTES)
    owner = f"{_temp_owner}-" if _temp_owner else ""
    return final.with_name(f"{TEMP_PREFIX}{stem}.{owner}{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def publish_bytes(final: Path, data: bytes, *, umask: int = 0o022, overwrite: bool = False) -> Path:
    """Write ``data`` to ``final`` atomically and durably; return ``final``.

    ``overwrite=False`` never replaces an existing file and raises ``FileExistsError`` instead.
    Any other failure removes the temp file and raises ``TransientError`` with the reason
    (disk full, permission denied, ...); the final name is then untouched.
    """
    final = Path(final)
    try:
        ensure_folder(final.parent, umask=umask)
    except OSError as exc:
        raise describe_os_error(exc, final) from exc

    tmp = temp_path_for(final)
    published = False
    try:
        _write_synced(tmp, data, file_mode(umask))
        if overwrite:
            os.replace(tmp, final)
        else:
            _publish_no_clobber(tmp, final)
        published = True
        _remove_quietly(tmp)  # the hard link's second name, before the folder is synced
        fsync_folder(final.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        if published and not overwrite:
            # Our own, complete file; take it back so a retry starts from a clean slate.
            _remove_quietly(final)
        raise describe_os_error(exc, final) from exc
    finally:
        _remove_quietly(tmp)
    return final


def _write_synced(tmp: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        # The process umask also applied to os.open; set exactly the mode we promise.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_no_clobber(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise _exists(final) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # FAT, exFAT and some SMB shares have no hard links. A checked rename leaves a tiny race
        # with another writer choosing the same name; the journal reserves names to avoid that.
        if os.path.lexists(final):
            raise _exists(final) from None
        os.rename(tmp, final)


def _exists(final: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(final))


def ensure_folder(folder: Path, *, umask: int = 0o022) -> None:
    """Create ``folder`` and any missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        # Not via mkdir's mode: the process umask (e.g. systemd's UMask=) would apply on top.
        path.chmod(0o777 & ~umask)
        fsync_folder(path.parent)


def describe_os_error(exc: OSError, path: Path) -> TransientError:
    """Turn a low-level write failure into a plain-language, retryable error."""
    where = str(path)
    if exc.errno in _DISK_FULL:
        return DiskFull(
            f"disk full while writing {path}",
            hint=f"free some space (or raise the quota) on the disk that holds {path.parent} "
            f"(`df -h {path.parent}` shows it)",
            where=where,
        )
    if exc.errno in _SHARE_GONE:
        return ShareGone(
            f"the outbox's network share stopped answering while writing {path} ({exc.strerror or exc})",
            hint=f"check the server and the mount of {path.parent} (`findmnt -T {path.parent}`)",
            where=where,
        )
    if exc.errno in {errno.EACCES, errno.EPERM}:
        return TransientError(
            f"permission denied while writing {path}",
            hint="let the user running fooocusd write to the outbox folder (check its owner and mode)",
            where=where,
        )
    if exc.errno == errno.EROFS:
        return TransientError(
            f"the outbox is on a read-only filesystem, cannot write {path}",
            hint="remount the disk read-write or point paths.outbox somewhere writable",
            where=where,
        )
    if exc.errno == errno.ENAMETOOLONG:
        return TransientError(
            f"file name too long for this filesystem: {path.name}",
            hint="use a shorter outbox.name_template or a shorter input file name",
            where=where,
        )
    reason = exc.strerror or str(exc)
    return TransientError(
        f"could not write {path}: {reason}",
        hint="check the disk holding the outbox (mounted, healthy, writable)",
        where=where,
    )


def cleanup_stale_temps(
    folder: Path,
    *,
    min_age_seconds: float = 0.0,
    recursive: bool = False,
    clock: Callable[[], float] = time.time,
    own_tag: str = "",
) -> list[Path]:
    """Delete temp files a crash left behind in ``folder``; return what was removed.

    With several daemons sharing one outbox, pass ``min_age_seconds`` so a temp that another
    process is writing right now is left alone; temps tagged ``own_tag`` (this instance's, see
    ``set_temp_owner``) are removed whatever their age.
    """
    if not folder.is_dir():
        return []
    candidates = folder.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if recursive else folder.iterdir()
    now = clock()
    removed: list[Path] = []
    for path in candidates:
        if not is_temp_name(path.name):
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        mine = bool(own_tag) and temp_owner_of(path.name) == own_tag
        if not path.is_file() or path.is_symlink() or (not mine and now - info.st_mtime < min_age_seconds):
            continue
        if _remove_quietly(path):
            removed.append(path)
    if removed:
        logger.info("removed {} leftover temp file(s) in {}", len(removed), folder)
    return removed


def _remove_quietly(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("could not remove temp file {}: {}", path, exc)
        return False
    return True
