"""A full disk under the outbox: the rendered image waits for room, nothing partial shows, and it is
written under its own name once space returns; the job is never failed for it, and a stop during
the wait puts the job back in the queue without charging an attempt.

The disk is filled at the lowest level the outbox uses: ``os.write`` / ``os.fsync`` raise ENOSPC
for file descriptors that point into the outbox (found through /proc/self/fd), and nothing else,
so the journal (SQLite) and the logs keep working as they would on a real full disk elsewhere.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.mounts_faked import FakeMount
from tests.reliability_checks import (
    assert_every_input_ended_exactly_once,
    assert_journal_consistent,
    assert_outputs_complete_and_unique,
    temp_leftovers,
)


class FullDisk:
    """ENOSPC (or ``error``) for writes (or fsyncs) into one folder while ``full`` is set."""

    def __init__(
        self, folder: Path, only: Callable[[str], bool] = lambda _name: True, error: int = errno.ENOSPC
    ) -> None:
        self.folder = str(folder.resolve())
        self.only = only
        self.error = error
        self.full = True
        self.refusals = 0

    def refuses(self, fd: int) -> bool:
        if not self.full:
            return False
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        if target.startswith(self.folder + os.sep) and self.only(os.path.basename(target)):
            self.refusals += 1
            return True
        return False

    def wrap(self, real: Callable[..., int]) -> Callable[..., int]:
        def patched(fd: int, *args: object) -> int:
            if self.refuses(fd):
                raise OSError(self.error, os.strerror(self.error))
            return real(fd, *args)

        return patched


@pytest.fixture
def full_outbox(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FullDisk]]:
    def fill(
        call: str = "write", only: Callable[[str], bool] = lambda _name: True, error: int = errno.ENOSPC
    ) -> FullDisk:
        sandbox.outbox.mkdir(parents=True, exist_ok=True)
        disk = FullDisk(sandbox.outbox, only, error)
        monkeypatch.setattr(os, call, disk.wrap(getattr(os, call)))
        return disk

    yield fill


def _retry_config(box: Sandbox, max_attempts: int) -> None:
    box.write_config(f"[journal]\nretry_backoff_seconds = 0.3\nmax_attempts = {max_attempts}\n")


def _is_sidecar_temp(name: str) -> bool:
    return ".json." in name


@pytest.mark.parametrize(
    ("call", "only"),
    [
        ("write", lambda _name: True),
        ("fsync", lambda _name: True),
        ("write", _is_sidecar_temp),  # the image lands, then its sidecar hits the full disk
    ],
    ids=["image-write", "image-fsync", "sidecar-write"],
)
def test_a_full_outbox_holds_the_image_until_space_returns_then_writes_it_under_its_own_name(
    sandbox: Sandbox, full_outbox: Callable[..., FullDisk], call: str, only: Callable[[str], bool]
) -> None:
    _retry_config(sandbox, max_attempts=1)  # a failed attempt would fail the job at once
    disk = full_outbox(call, only)
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nimages: 2\nsteps: 2\n")
    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    try:
        with RunningDaemon(sandbox.settings()) as running:
            wait_for(lambda: disk.refusals >= 3, what="the write tried again on the full disk")
            assert running.error is None
            assert sandbox.images() == [] and sandbox.sidecars() == [], "a partial output is visible"
            assert temp_leftovers(sandbox) == [], "a temp file was left behind"
            assert sandbox.files(sandbox.failed) == [], "a full disk is not the input's fault"
            assert sandbox.journal_rows("SELECT state, attempts, error FROM jobs") == [("running", 1, None)]
            disk.full = False  # space returns
            wait_for(lambda: (sandbox.done / "fox.txt").exists(), what="the job to finish")
    finally:
        logger.remove(sink)

    full_lines = [line for line in said if "disk full while writing" in line]
    assert len(full_lines) == 1, "said once, not at every try"
    assert "free some space" in full_lines[0] and "the daemon waits" in full_lines[0]
    assert sorted(p.name for p in sandbox.images()) == ["fox_5_0.png", "fox_6_1.png"], (
        "same names, no -1 copies"
    )
    assert sandbox.journal_rows("SELECT state, attempts FROM jobs") == [("done", 1)]
    assert_every_input_ended_exactly_once(sandbox, ["fox.txt"])
    assert_outputs_complete_and_unique(sandbox)
    assert_journal_consistent(sandbox)


@pytest.mark.parametrize("error", [errno.ENOTCONN, errno.ESTALE], ids=["fuse-disconnected", "nfs-stale"])
def test_an_outbox_share_that_stops_answering_holds_the_image_until_it_answers_again(
    sandbox: Sandbox, full_outbox: Callable[..., FullDisk], logged: list[str], error: int
) -> None:
    _retry_config(sandbox, max_attempts=1)  # a failed attempt would fail the job at once
    share = full_outbox("write", error=error)
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nsteps: 2\n")

    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: share.refusals >= 3, what="the write tried again on the gone share")
        assert running.error is None
        assert sandbox.images() == [] and sandbox.files(sandbox.failed) == []
        assert sandbox.journal_rows("SELECT state, attempts, error FROM jobs") == [("running", 1, None)]
        share.full = False  # the server is back
        wait_for(lambda: (sandbox.done / "fox.txt").exists(), what="the job to finish")

    gone = [line for line in logged if "network share stopped answering" in line]
    assert len(gone) == 1, "said once, not at every try"
    assert "findmnt" in gone[0] and "carries on by itself when the share answers again" in gone[0]
    assert [p.name for p in sandbox.images()] == ["fox_5_0.png"]
    assert sandbox.journal_rows("SELECT state, attempts FROM jobs") == [("done", 1)]
    assert_outputs_complete_and_unique(sandbox)


def test_an_outbox_unmounted_with_its_share_waits_instead_of_filling_the_bare_mount_point(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    _retry_config(sandbox, max_attempts=1)
    sandbox.outbox.mkdir(parents=True)
    share = FakeMount(monkeypatch, sandbox.outbox)  # the outbox is a share's mount point
    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: any(line.startswith("ready: ") for line in logged), what="the daemon ready")
        share.unmount()
        sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nsteps: 2\n")
        wait_for(lambda: any("which is no longer mounted" in line for line in logged), what="the wait")
        time.sleep(1.5)  # a few more tries
        assert running.error is None
        assert sandbox.images() == [], "an image was written onto the bare mount point"
        assert sandbox.journal_rows("SELECT state, attempts, error FROM jobs") == [("running", 1, None)]
        assert sandbox.files(sandbox.failed) == []
        share.mount()
        wait_for(lambda: (sandbox.done / "fox.txt").exists(), what="the job to finish")

    gone = [line for line in logged if "which is no longer mounted" in line]
    assert len(gone) == 1 and f"mount {sandbox.outbox}" in gone[0], "said once, with what to do"
    assert [p.name for p in sandbox.images()] == ["fox_5_0.png"]
    assert sandbox.journal_rows("SELECT state, attempts FROM jobs") == [("done", 1)]


def test_stopping_while_the_outbox_is_full_requeues_the_job_without_charging_an_attempt(
    sandbox: Sandbox, full_outbox: Callable[..., FullDisk]
) -> None:
    _retry_config(sandbox, max_attempts=1)
    disk = full_outbox("write")
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nsteps: 2\n")

    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: disk.refusals >= 2, what="the write waiting for room")
        asked_to_stop = time.monotonic()
    assert time.monotonic() - asked_to_stop < 10, "a stop wakes the wait"
    assert running.error is None
    assert sandbox.journal_rows("SELECT state, attempts, error FROM jobs") == [("queued", 0, None)]
    assert sandbox.images() == [] and temp_leftovers(sandbox) == []
    assert sandbox.files(sandbox.failed) == []

    disk.full = False
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.jobs_failed) == (1, 0)
    assert [p.name for p in sandbox.images()] == ["fox_5_0.png"]
    assert_every_input_ended_exactly_once(sandbox, ["fox.txt"])
    assert_journal_consistent(sandbox)


def test_a_new_outbox_subfolder_on_a_full_disk_waits_for_room_too(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    _retry_config(sandbox, max_attempts=1)
    sandbox.outbox.mkdir(parents=True)
    refused: list[str] = []
    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if Path(path).parent == sandbox.outbox and len(refused) < 3:
            refused.append(str(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    sandbox.drop("portrait/fox.txt", "a fox in snow\nseed: 5\nsteps: 2\n")

    summary = sandbox.drain()

    assert len(refused) == 3 and (summary.jobs_done, summary.jobs_failed) == (1, 0)
    assert [p.relative_to(sandbox.outbox).as_posix() for p in sandbox.images()] == ["portrait/fox_5_0.png"]
    assert sandbox.journal_rows("SELECT attempts FROM jobs") == [(1,)]
