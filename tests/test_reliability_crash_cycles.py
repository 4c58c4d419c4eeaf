"""Fifty-plus kill -9 cycles of the real daemon over a stream of jobs, then one clean drain:
nothing lost, nothing run or moved twice, nothing partial visible, journal consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.daemon_harness import REPO, Sandbox
from tests.reliability_checks import (
    assert_every_input_ended_exactly_once,
    assert_journal_consistent,
    assert_outputs_complete_and_unique,
)

CYCLES = 55
SEED = int(os.environ.get("RELIABILITY_CRASH_SEED", "20261127"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fifty_random_kill_9_cycles_then_a_drain_lose_and_repeat_nothing(sandbox: Sandbox) -> None:
    config = sandbox.config.read_text(encoding="utf-8").replace(
        "settle_seconds = 0.3", "settle_seconds = 0.1"
    )
    sandbox.config.write_text(config, encoding="utf-8")
    report = sandbox.root / "cycles.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOOCUSD_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    server = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability_forkserver",
            str(sandbox.config),
            str(SEED),
            str(CYCLES),
            str(report),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert server.returncode == 0, f"seed {SEED}: fork server failed\n{server.stderr[-3000:]}"
    result = json.loads(report.read_text(encoding="utf-8"))
    killed = [c for c in result["cycles"] if c["signal"] == 9]
    assert len(killed) >= 50, f"seed {SEED}: only {len(killed)} cycles ended in SIGKILL: {result['cycles']}"
    assert all(c["exit"] in (None,) for c in result["cycles"]), f"seed {SEED}: a child exited by itself"

    summary = sandbox.drain()

    context = f"seed {SEED} (rerun with RELIABILITY_CRASH_SEED={SEED}); summary {summary}"
    try:
        assert_every_input_ended_exactly_once(sandbox, result["dropped"])
        assert_outputs_complete_and_unique(sandbox)
        assert_journal_consistent(sandbox)
    except AssertionError as exc:
        raise AssertionError(f"{context}: {exc}") from exc
    assert summary.jobs_failed == 0 or any(
        "crashed the daemon" in p.read_text() for p in sandbox.files(sandbox.failed, "*.error.txt")
    ), context


class _DiedHere(BaseException):
    """Stands in for the process dying at a crash point, inside this test process."""


def test_crash_while_moving_a_failed_input_still_leaves_its_error_file(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the kill cycles: the reason was written after the moves were journaled, and
    reconciliation only completes moves, so a kill in between left a failed input without one."""
    from fooocusd.engine.sdxl import SDXLEngine
    from fooocusd.errors import InvalidInput
    from fooocusd.service import finisher

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise InvalidInput("the engine refused this prompt", hint="reword it")

    def die(name: str) -> None:
        if name == "after_begin_finish":
            raise _DiedHere(name)

    monkeypatch.setattr(SDXLEngine, "generate", refuse)
    monkeypatch.setattr(finisher, "crashpoint", die)
    sandbox.drop("doomed.txt", "a doomed fox\nseed: 1\nsteps: 2\n")
    with pytest.raises(_DiedHere):
        sandbox.drain()
    monkeypatch.undo()

    sandbox.drain()

    assert_every_input_ended_exactly_once(sandbox, ["doomed.txt"])
    report = (sandbox.failed / "doomed.txt.error.txt").read_text(encoding="utf-8")
    assert "the engine refused this prompt" in report
    assert_journal_consistent(sandbox)
