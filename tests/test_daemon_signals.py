"""SIGTERM: finish the current image, leave the rest queued, exit 0, lose nothing."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.daemon_harness import REPO, Sandbox, wait_for


@pytest.mark.slow
def test_sigterm_finishes_the_current_image_and_the_rest_runs_after_restart(sandbox: Sandbox) -> None:
    sandbox.drop("many.txt", "a windmill\nseed: 50\nimages: 6\n")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fooocusd.cli", "run", "--config", str(sandbox.config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: len(sandbox.sidecars()) >= 1, timeout=90, what="the first image")
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, output
    stopped_with = len(sandbox.sidecars())
    assert 1 <= stopped_with < 6, "it stopped after the image in progress, not at the end of the job"
    assert (sandbox.state / "processing").exists() and not (sandbox.done / "many.txt").exists()
    assert "stopped: 1 job(s) wait in the journal and run at the next start" in output

    assert sandbox.drain().ok
    names = sorted(p.name for p in sandbox.images())
    assert names == [f"many_{50 + i}_{i}.png" for i in range(6)]
    assert (sandbox.done / "many.txt").exists()
