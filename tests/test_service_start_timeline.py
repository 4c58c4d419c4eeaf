"""The start, step by step: logged at ready, kept on the daemon, served as a metric."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from loguru import logger

from fooocusd.service import start_timeline
from fooocusd.service.daemon import Daemon
from fooocusd.service.start_timeline import StartTimeline
from fooocusd.step_timer import StepTimer, expanded
from tests.daemon_harness import Sandbox


def test_the_process_start_comes_from_proc_before_the_first_line_of_python_runs() -> None:
    script = (
        "import time, json; first = time.time()\n"
        "from fooocusd.service.start_timeline import process_start_time\n"
        "print(json.dumps([process_start_time(), first]))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    started, first_line = json.loads(output)
    # /proc counts in clock ticks (10 ms) from a boot time read at another moment: allow for both
    assert started is not None and started - 0.05 <= first_line <= started + 5.0


def test_where_proc_cannot_be_read_the_timeline_starts_with_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(start_timeline, "process_start_time", lambda: None)
    timeline = StartTimeline.since_process_start()
    timeline.reached("model", timeline.origin + 2.0)
    assert timeline.steps == {"model": 2.0}
    assert timeline.summary() == "2.0 s after the daemon started (model 2.0 s)"


def test_a_process_start_after_now_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_timeline, "process_start_time", lambda: time.time() + 60)
    assert not StartTimeline.since_process_start().from_process_start


def test_the_summary_lists_each_step_with_its_parts_and_sums_the_small_ones() -> None:
    timeline = StartTimeline(100.0, from_process_start=True)
    timeline.reached("interpreter and imports", 106.2)
    timeline.reached("settings, presets and styles", 106.23)
    timeline.reached("model", 114.3)
    timeline.reached("journal checked", 114.33)
    timeline.reached("warm-up render", 121.2)
    timeline.details["model"] = {"checkpoint read": 0.9, "attention chosen": 2.5, "hashed": 0.001}

    assert timeline.summary() == (
        "21.2 s after the process started (interpreter and imports 6.2 s, model 8.1 s "
        "[checkpoint read 0.9 s, attention chosen 2.5 s], warm-up render 6.9 s, other steps 0.1 s)"
    )
    record = timeline.record()
    assert record["total"] == pytest.approx(21.2) and record["model"] == pytest.approx(8.07)


def test_a_step_reached_twice_adds_up() -> None:
    timer = StepTimer(0.0)
    timer.reached("load", 1.0)
    timer.reached("check", 1.5)
    timer.reached("load", 3.0)
    assert timer.steps == {"load": 2.5, "check": 0.5} and timer.total == 3.0


def test_a_step_is_expanded_into_its_parts_in_place_keeping_what_they_leave() -> None:
    steps = {"read": 1.0, "acceleration": 5.0, "hashed": 0.5}
    parts = {"attention chosen": 2.5, "moved to the device": 2.0}
    assert expanded(steps, "acceleration", parts) == {
        "read": 1.0,
        "attention chosen": 2.5,
        "moved to the device": 2.0,
        "acceleration": 0.5,
        "hashed": 0.5,
    }
    assert expanded(steps, "acceleration", {"all of it": 5.0}) == {
        "read": 1.0,
        "all of it": 5.0,
        "hashed": 0.5,
    }


def test_the_daemon_logs_at_ready_where_its_start_went(sandbox: Sandbox) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="INFO", format="{message}")
    try:
        daemon = Daemon(sandbox.settings())
        daemon.run(drain=True)
    finally:
        logger.remove(sink)

    timeline = daemon.start_timeline
    assert timeline is not None and timeline.from_process_start
    assert list(timeline.steps) == [
        "interpreter and imports",
        "settings, presets and styles",
        "engine and journal opened",
        "journal checked against the folders",
        "model",
        "prompt expansion",
        "warm-up render",
        "watching the inbox",
    ]
    load_steps = timeline.details["model"]
    assert {"checkpoint read", "attention chosen", "moved to the device", "kernels checked", "hashed"} <= set(
        load_steps
    )
    assert sum(load_steps.values()) <= timeline.steps["model"] + 0.01
    (ready,) = [line for line in messages if line.startswith("ready: watching")]
    assert str(sandbox.inbox) in ready and "s after the process started (" in ready


def test_a_daemon_started_inside_a_busy_process_is_timed_from_its_own_start(sandbox: Sandbox) -> None:
    daemon = Daemon(sandbox.settings(), timed_from_process_start=False)
    daemon.run(drain=True)
    timeline = daemon.start_timeline
    assert timeline is not None and not timeline.from_process_start
    assert "interpreter and imports" not in timeline.steps
    assert "after the daemon started" in timeline.summary()
