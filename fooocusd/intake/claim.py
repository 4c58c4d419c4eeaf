"""Move files out of the inbox so that a crash can never leave a half-written copy.

``move_durably`` is a plain ``rename`` on one filesystem. Across filesystems (EXDEV) it copies
to a hidden temp name beside the destination, fsyncs, publishes with a no-clobber link (or a
rename where links are unsupported), fsyncs the folder, and only then removes the source. At
every instant the destination is either absent or complete; at worst (crash after publishing)
both copies exist, which start-up reconciliation resolves.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat as stat_mode
from pathlib import Path

from loguru import logger

from fooocusd.durable import fsync_folder
from fooocusd.file_names import NAME_MAX, fitted_name

TEMP_PREFIX = ".fooocusd-"
_COPY_CHUNK = 1024 * 1024
# Directory fsync is refused by some network filesystems; nothing more we can do there.
# Hard links are missing on FAT/exFAT and some SMB/FUSE mounts.
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV})


fsync_dir = fsync_folder


def move_durably(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` (never overwriting it). Raises ``FileExistsError`` if ``dst``
    exists, ``FileNotFoundError`` if ``src`` is gone, ``IsADirectoryError``/``OSError`` for
    anything that is not a regular file (never opened, so a FIFO cannot block), and other
    ``OSError``s (e.g. disk full) with no partial file left at ``dst``."""
    src, dst = Path(src), Path(dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination already exists", str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _move_across_filesystems(src, dst)
        return
    _fsync_parents(src, dst)


def copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (never overwriting it), fsynced before it appears; ``src`` stays.

    For a file several claims need (a picture several job files name). Raises like
    ``move_durably``: ``FileExistsError``, ``FileNotFoundError``, ``OSError`` for non-regular files."""
    src, dst = Path(src), Path(dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination already exists", str(dst))
    info = os.lstat(src)
    if not stat_mode.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "only regular files can be copied", str(src))
    temp = dst.parent / fitted_name(f"{TEMP_PREFIX}{dst.name}", f".{secrets.token_hex(4)}.part")
    try:
        _copy_and_fsync(src, temp)
        _publish_no_clobber(temp, dst)
    except BaseException:
        _remove_quietly(temp)
        raise
    fsync_dir(dst.parent)


ROOM_KEPT = len(".error.txt")
"""Names made here stay this many bytes under the limit, so that failed/ can hold a
``<name>.error.txt`` beside any input."""


def unique_destination(folder: Path, name: str) -> Path:
    """A path in ``folder`` that does not exist yet: ``name``, else a free ``stem-N.ext``.

    A name too long to fit ``NAME_MAX`` less ``ROOM_KEPT`` bytes has its stem cut to fit (the
    ``-N`` and the extension are kept), so that neither it nor its error file fails with
    ENAMETOOLONG.

    The variants of one name are usually a run (``stem-1`` … ``stem-n``, a script that always
    drops ``job.txt``), so the search doubles N until a free one, then bisects back to the first
    free one after the run: about 2·log2(n) checks instead of n (20,000 same-named inputs in
    ``done/`` took 0.42 s per file by counting up). Where variants were deleted from the middle it
    may return an earlier gap; it always returns a name that does not exist.

    Callers must still publish without clobbering (``move_durably`` does), because another
    process may take the name between this check and the move; see ``move_to_unique``."""
    folder = Path(folder)
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix else name

    limit = NAME_MAX - ROOM_KEPT

    def variant(counter: int) -> Path:
        return folder / fitted_name(stem, f"-{counter}{suffix}" if counter else suffix, limit)

    if not os.path.lexists(variant(0)):
        return variant(0)
    taken, free = 0, 1
    while os.path.lexists(variant(free)):
        taken, free = free, free * 2
    while free - taken > 1:
        middle = (taken + free) // 2
        if os.path.lexists(variant(middle)):
            taken = middle
        else:
            free = middle
    return variant(free)


def move_to_unique(src: Path, folder: Path, name: str | None = None, attempts: int = 100) -> Path:
    """Move ``src`` into ``folder`` under ``name`` (default: its own) or the next free variant.
    Returns where it ended up."""
    name = name or Path(src).name
    for _ in range(attempts):
        dst = unique_destination(folder, name)
        try:
            move_durably(src, dst)
        except FileExistsError:
            continue  # lost a race for that name; pick the next one
        return dst
    raise FileExistsError(errno.EEXIST, f"no free name for {name} after {attempts} tries", str(folder))


def _move_across_filesystems(src: Path, dst: Path) -> None:
    copy_durably(src, dst)
    os.unlink(src)
    fsync_dir(src.parent)


def _copy_and_fsync(src: Path, temp: Path) -> None:
    # O_NOFOLLOW|O_NONBLOCK: a file swapped for a link or FIFO after our lstat fails instead of blocking.
    src_fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(src_fd, "rb") as reader:
        if not stat_mode.S_ISREG(os.fstat(reader.fileno()).st_mode):
            raise OSError(errno.EINVAL, "source is no longer a regular file", str(src))
        temp_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(temp_fd, "wb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_CHUNK)
            writer.flush()
            shutil.copystat(src, temp)  # keep mtime: outputs and the journal refer to it
            os.fsync(writer.fileno())


def _publish_no_clobber(temp: Path, dst: Path) -> None:
    try:
        os.link(temp, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination already exists", str(dst)) from exc
        os.replace(temp, dst)
        return
    os.unlink(temp)


def _fsync_parents(src: Path, dst: Path) -> None:
    fsync_dir(dst.parent)
    if os.path.realpath(src.parent) != os.path.realpath(dst.parent):
        fsync_dir(src.parent)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove temporary file {}: {}", path, exc)


def digest_files(paths: list[Path]) -> tuple[str, int]:
    """One sha256 over all files of a drop, so a re-submitted pair is recognised as a whole."""
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size
