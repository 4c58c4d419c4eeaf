"""A GPU that stops working mid-run (a sticky CUDA error: an illegal memory access, a driver fault)
can run nothing more in that process. The daemon stops rather than fail every queued job with the
same error; the job it was rendering is counted as a crash at the next start, and the others stay
queued at no cost."""

from __future__ import annotations

import pytest

from fooocusd.cli import main
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.errors import GpuLost
from fooocusd.service import worker as worker_module
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for

STICKY = "CUDA error: an illegal memory access was encountered"


def _break_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every render fails as on a GPU whose context a fault has ruined, and the check says so."""

    def render(self: SDXLEngine, *args: object, **kwargs: object) -> object:
        raise RuntimeError(STICKY)

    monkeypatch.setattr(SDXLEngine, "_render", render)
    monkeypatch.setattr(worker_module, "context_lost", lambda device: f"AcceleratorError: {STICKY}")


def test_a_gpu_that_stops_working_stops_the_daemon_and_the_queue_waits_for_the_next_start(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    sandbox.drop("owl.txt", "an owl\nsteps: 2\n")
    with monkeypatch.context() as broken:
        _break_the_gpu(broken)
        with RunningDaemon(sandbox.settings()) as running:
            wait_for(lambda: running.error is not None, what="the daemon to stop")
    assert isinstance(running.error, GpuLost)
    assert running.error.message.startswith("the GPU stopped working while rendering ")
    assert running.error.message.endswith(f": AcceleratorError: {STICKY}")
    assert "journalctl -k" in running.error.hint
    jobs = dict(sandbox.journal_rows("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    assert jobs.get("failed") is None, "no job was failed for the GPU's fault"
    assert jobs.get("running") == 1  # the one it was rendering: a crash, counted at the next start
    assert sandbox.images() == []

    with RunningDaemon(sandbox.settings()) as running:  # a fresh start: a working GPU
        wait_for(lambda: len(sandbox.images()) == 2, what="both images")
    assert running.error is None
    assert sandbox.journal_rows("SELECT state FROM jobs") == [("done",), ("done",)]


def test_an_error_that_leaves_the_gpu_working_is_still_the_jobs_own(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def render(self: SDXLEngine, *args: object, **kwargs: object) -> object:
        raise RuntimeError("shape mismatch in a custom node")

    monkeypatch.setattr(SDXLEngine, "_render", render)
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    with RunningDaemon(sandbox.settings()) as running:
        wait_for(
            lambda: sandbox.journal_rows("SELECT attempts, state FROM jobs") == [(1, "queued")],
            what="the job set to be retried",
        )
    assert running.error is None


def test_once_on_a_gpu_that_stops_working_says_so_and_exits_with_an_error(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _break_the_gpu(monkeypatch)
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    code = main(["once", "--no-progress", "--config", str(sandbox.config)])
    said = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert (
        "the GPU stopped working while rendering" in said and "fooocusd stops so that a fresh start" in said
    )
