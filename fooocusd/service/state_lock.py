"""One daemon per state folder.

Two daemons on one journal would each take the other's running jobs for their own crashed ones
at start-up, and run them again. An exclusive ``flock`` on a file in the state folder keeps the
second one out; the kernel lets go of it when the process ends, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

from fooocusd.errors import ConfigError

LOCK_FILE_NAME = "daemon.lock"
PROBE_GRACE_SECONDS = 1.0
"""How long a starting daemon retries a held lock before it takes the holder for a daemon."""


@contextmanager
def state_folder_lock(state: Path) -> Iterator[None]:
    """Hold the state folder's lock for the block, or raise ``ConfigError`` naming the holder."""
    path = state / LOCK_FILE_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            _lock_exclusively(fd)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            raise another_daemon_holds(state, holder) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            logger.warning(
                "cannot lock {} ({}): make sure no other fooocusd uses this state folder", path, exc.strerror
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


def _lock_exclusively(fd: int) -> None:
    """``flock`` it exclusively, or ``BlockingIOError`` when it stays held.

    ``daemon_holding`` (``status``, ``doctor``, a starting ``run``) holds the lock shared for a few
    microseconds; a daemon starting in that moment must not take the probe for a daemon.
    """
    deadline = time.monotonic() + PROBE_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def another_daemon_holds(state: Path, holder: str) -> ConfigError:
    """The error for a daemon started on a state folder that another one holds (pid ``holder``)."""
    return ConfigError(
        f"another fooocusd{f' (pid {holder})' if holder.isdigit() else ''} is already running "
        f"with the state folder {state}",
        hint="stop it first (e.g. systemctl stop fooocusd), or give this one its own state folder "
        "(--state-dir or paths.state): two daemons must never share one",
        where=str(state / LOCK_FILE_NAME),
    )


def daemon_holding(state: Path) -> str | None:
    """The pid of the daemon that holds the state folder now ("?" when it is not written yet),
    or None when no daemon holds it.

    The probe takes the lock for a moment only when it is free, and opens the file read-only, so
    it works for users who may read the state folder but not write it.
    """
    try:
        fd = os.open(state / LOCK_FILE_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # never started here, or not ours to read
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            return holder if holder.isdigit() else "?"
        except OSError:  # a filesystem without locks cannot tell
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
