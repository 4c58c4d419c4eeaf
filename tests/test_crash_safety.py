"""kill -9 at every ordering point of a job, then restart: nothing lost, nothing run twice."""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest

from tests.daemon_harness import Sandbox

CRASH_POINTS = [
    "after_begin_claim",
    "after_claim_move",
    "after_complete_claim",
    "before_generate",
    "before_generate:2",
    "after_image_published",
    "after_output_written",
    "after_output_recorded",
    "after_job_done",
    "after_begin_finish",
]


def _assert_consistent(box: Sandbox) -> None:
    assert [p.name for p in box.files(box.done)] == ["job.txt"], "the input ends exactly once in done/"
    assert box.files(box.failed) == []
    assert box.files(box.inbox) == []
    images = sorted(p.name for p in box.images())
    assert images == ["job_11_0.png", "job_12_1.png"], "no partial and no duplicate outputs"
    for image in box.images():
        record = json.loads(image.with_suffix(".json").read_text())
        assert record["image_index"] in (0, 1)
    leftovers = [p for p in box.root.rglob(".fooocusd-*")]
    assert leftovers == [], "no temporary files remain"
    with sqlite3.connect(box.state / "journal.sqlite3") as db:
        states = {row[0] for row in db.execute("select state from jobs")}
        assert states == {"done"}
        outputs = db.execute("select count(*), sum(state = 'complete') from outputs").fetchone()
        assert outputs == (2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_at_any_point_the_restart_finishes_exactly_once(sandbox: Sandbox, point: str) -> None:
    sandbox.drop("job.txt", "a lighthouse\nseed: 11\nimages: 2\n")

    crashed = sandbox.once(env={"FOOOCUSD_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    assert sandbox.drain().ok, "the restart (here in-process) finishes the job"
    _assert_consistent(sandbox)


@pytest.mark.slow
def test_random_kills_during_a_stream_of_jobs_lose_and_repeat_nothing(sandbox: Sandbox) -> None:
    import random
    import subprocess
    import sys
    import time

    from tests.daemon_harness import REPO

    # The kills are not the jobs' fault: on a slow machine one job can be running at two of them,
    # which by default quarantines it as a poison input (tested below), so allow more crashes here.
    sandbox.write_config("[journal]\nmax_crashes = 100\n")
    rng = random.Random(20261126)
    names = [f"job{n}.txt" for n in range(6)]
    for n, name in enumerate(names):
        sandbox.drop(name, f"a lighthouse number {n}\nseed: {100 + n}\n")
    for _cycle in range(4):
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fooocusd.cli", "run", "--config", str(sandbox.config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(4.0, 12.0))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    assert sandbox.drain().ok
    assert sorted(p.name for p in sandbox.files(sandbox.done)) == sorted(names)
    assert sorted(p.name for p in sandbox.images()) == sorted(f"job{n}_{100 + n}_0.png" for n in range(6))
    assert len(sandbox.sidecars()) == 6
    assert [p for p in sandbox.root.rglob(".fooocusd-*")] == []


@pytest.mark.slow
@pytest.mark.parametrize(("max_crashes", "ends_in"), [(2, "failed"), (3, "done")])
def test_a_job_running_at_each_of_max_crashes_deaths_is_quarantined(
    sandbox: Sandbox, max_crashes: int, ends_in: str
) -> None:
    sandbox.write_config(f"[journal]\nmax_crashes = {max_crashes}\n")
    sandbox.drop("job.txt", "a lighthouse\nseed: 11\n")
    for _ in range(2):
        crashed = sandbox.once(env={"FOOOCUSD_CRASH_AT": "before_generate"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]

    summary = sandbox.drain()
    if ends_in == "done":
        assert [p.name for p in sandbox.files(sandbox.done)] == ["job.txt"]
        assert summary.images_written == 1 and sandbox.files(sandbox.failed) == []
    else:
        assert [p.name for p in sandbox.files(sandbox.failed)] == ["job.txt", "job.txt.error.txt"]
        reason = (sandbox.failed / "job.txt.error.txt").read_text()
        assert "crashed the daemon 2 times; quarantined as a poison input" in reason
        assert summary.images_written == 0
