"""A full disk under the outbox: the job waits (transient), nothing partial shows, and it completes
once space returns; if space never returns, it fails saying "disk full" and "free some space".

The disk is filled at the lowest level the outbox uses: ``os.write`` / ``os.fsync`` raise ENOSPC
for file descriptors that point into the outbox (found through /proc/self/fd), and nothing else,
so the journal (SQLite) and the logs keep working as they would on a real full disk elsewhere.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.reliability_checks import (
    assert_every_input_ended_exactly_once,
    assert_journal_consistent,
    assert_outputs_complete_and_unique,
    temp_leftovers,
)


class FullDisk:
    """ENOSPC for writes (or fsyncs) into one folder while ``full`` is set."""

    def __init__(self, folder: Path, only: Callable[[str], bool] = lambda _name: True) -> None:
        self.folder = str(folder.resolve())
        self.only = only
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
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args)

        return patched


@pytest.fixture
def full_outbox(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FullDisk]]:
    def fill(call: str = "write", only: Callable[[str], bool] = lambda _name: True) -> FullDisk:
        sandbox.outbox.mkdir(parents=True, exist_ok=True)
        disk = FullDisk(sandbox.outbox, only)
        monkeypatch.setattr(os, call, disk.wrap(getattr(os, call)))
        return disk

    yield fill


def _job_errors(box: Sandbox) -> list[str]:
    return [row[0] or "" for row in box.journal_rows("SELECT error FROM jobs")]


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
def test_disk_full_requeues_the_job_leaves_nothing_partial_and_completes_when_space_returns(
    sandbox: Sandbox, full_outbox: Callable[..., FullDisk], call: str, only: Callable[[str], bool]
) -> None:
    _retry_config(sandbox, max_attempts=10)
    disk = full_outbox(call, only)
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nimages: 2\nsteps: 2\n")

    with RunningDaemon(sandbox.settings()):
        wait_for(lambda: any("disk full" in e for e in _job_errors(sandbox)), what="a disk-full retry")
        assert sandbox.images() == [] and sandbox.sidecars() == [], "a partial output is visible"
        assert temp_leftovers(sandbox) == [], "a temp file was left behind"
        assert sandbox.files(sandbox.failed) == [], "a full disk is not the input's fault"
        disk.full = False  # space returns
        wait_for(lambda: (sandbox.done / "fox.txt").exists(), what="the job to finish")

    assert disk.refusals >= 1
    assert sorted(p.name for p in sandbox.images()) == ["fox_5_0.png", "fox_6_1.png"], (
        "same names, no -1 copies"
    )
    assert_every_input_ended_exactly_once(sandbox, ["fox.txt"])
    assert_outputs_complete_and_unique(sandbox)
    assert_journal_consistent(sandbox)


def test_disk_full_that_lasts_fails_the_job_saying_disk_full_and_free_space(
    sandbox: Sandbox, full_outbox: Callable[..., FullDisk]
) -> None:
    _retry_config(sandbox, max_attempts=2)
    full_outbox("write")
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nsteps: 2\n")

    summary = sandbox.drain()

    assert summary.jobs_failed == 1
    report = (sandbox.failed / "fox.txt.error.txt").read_text(encoding="utf-8")
    assert "disk full" in report.lower()
    assert "free some space" in report.lower()
    assert "gave up after 2 attempts" in report
    assert sandbox.images() == [] and sandbox.sidecars() == []
    assert temp_leftovers(sandbox) == []
    assert_journal_consistent(sandbox)
