"""Durability primitives shared by intake (claims) and the outbox (publishing)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from loguru import logger

# Some network filesystems refuse to open or fsync a directory; their renames are as durable
# as they get, so this is not an error.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EACCES})


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (creations, renames, deletions) durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            logger.debug("cannot open {} to fsync it: {}", folder, exc)
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
        logger.debug("fsync of folder {} not supported here: {}", folder, exc)
    finally:
        os.close(fd)
