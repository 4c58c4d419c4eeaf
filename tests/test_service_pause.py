"""``fooocusd pause`` / ``resume``: the queue held and let go, with files still taken in."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import numpy as np
import pytest

from fooocusd.cli import main
from fooocusd.engine.factory import create_engine
from fooocusd.engine.router import FamilyRouter
from fooocusd.errors import InvalidInput
from fooocusd.service.engine_rest import EngineRest
from fooocusd.service.pause import current_pause, parse_duration, pause_queue, resume_queue
from fooocusd.settings import EngineSettings
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.engine_helpers import default_request


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("1.5h", 5400)],
)
def test_durations_are_read_in_days_hours_minutes_and_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10", "2 weeks", "0m", "5m later"])
def test_a_duration_that_cannot_be_read_is_refused_with_examples(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text)
    assert "30m" in (caught.value.hint or "")


def test_a_pause_holds_until_resumed_or_until_its_end_time(tmp_path: Path) -> None:
    assert current_pause(tmp_path) is None
    pause_queue(tmp_path, None, now=1000.0)
    assert current_pause(tmp_path, now=10**10) is not None
    ended = resume_queue(tmp_path)
    assert ended is not None and ended.since == 1000.0
    assert current_pause(tmp_path) is None and resume_queue(tmp_path) is None
    pause_queue(tmp_path, 60.0, now=1000.0)
    assert current_pause(tmp_path, now=1059.0) is not None
    assert current_pause(tmp_path, now=1060.0) is None


def test_the_commands_pause_and_resume_and_status_says_so(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(sandbox.config)]
    assert main(["pause", "--for", "2h", *config]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert said.startswith("paused since ") and " until " in said and "`fooocusd resume` ends it" in said
    assert main(["status", *config]) == 0
    assert "queue: paused since " in capsys.readouterr().out
    assert main(["status", "--json", *config]) == 0
    paused = json.loads(capsys.readouterr().out)["paused"]
    assert paused["until"] - paused["since"] == pytest.approx(7200)
    assert main(["resume", *config]) == 0
    assert capsys.readouterr().out.startswith("resumed: the queue was paused since ")
    assert main(["status", "--json", *config]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is None
    assert main(["pause", "--for", "soon", *config]) == 2


def test_once_while_paused_queues_the_files_and_runs_nothing_until_resumed(sandbox: Sandbox) -> None:
    pause_queue(sandbox.state, None)
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    sandbox.drop("owl.txt", "an owl\nsteps: 2\n")
    summary = sandbox.drain()
    assert (summary.queued_jobs, summary.jobs_done, summary.left_paused) == (2, 0, 2)
    assert sandbox.images() == [] and sandbox.files(sandbox.inbox) == []
    resume_queue(sandbox.state)
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.images_written, summary.left_paused) == (2, 2, 0)


def test_a_pause_stops_a_running_job_after_its_image_and_resume_makes_only_the_rest(sandbox: Sandbox) -> None:
    sandbox.drop("many.txt", "a field of flowers\nimages: 12\nsteps: 3\n")
    with RunningDaemon(sandbox.settings()):
        wait_for(lambda: len(sandbox.images()) >= 1, what="the first image")
        pause_queue(sandbox.state, None)
        wait_for(
            lambda: sandbox.journal_rows("SELECT state FROM jobs") == [("queued",)],
            what="the job back in the queue",
        )
        made = len(sandbox.images())
        assert 1 <= made < 12
        time.sleep(1.0)
        assert len(sandbox.images()) == made, "nothing renders while paused"
        [(detail,)] = sandbox.journal_rows("SELECT detail FROM events WHERE kind = 'interrupted'")
        assert detail == "paused by `fooocusd pause`; requeued"
        resume_queue(sandbox.state)
        wait_for(lambda: sandbox.journal_rows("SELECT state FROM jobs") == [("done",)], what="the job done")
    names = sorted(image.name for image in sandbox.images())
    assert len(names) == 12 and not any("-1." in name for name in names), names
    assert sorted(int(name.rsplit("_", 1)[1].split(".")[0]) for name in names) == list(range(12))


def test_a_state_folder_the_user_cannot_write_is_said_with_who_can(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*_args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fooocusd.service.pause.write_json_atomically", refused)
    assert main(["pause", "--config", str(sandbox.config)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "cannot change" in said and "paused.json: Permission denied" in said
    assert "sudo -u fooocusd fooocusd pause" in said


def test_a_state_folder_on_a_full_disk_is_said_with_where_to_free_space(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fooocusd.service.pause.write_json_atomically", full)
    assert main(["pause", "--config", str(sandbox.config)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "paused.json: No space left on device" in said
    assert f"free some space on the disk that holds {sandbox.state}" in said and "sudo" not in said


def test_resting_unloads_a_real_engine_and_waking_loads_the_same_model_again(
    tmp_path: Path, logged: list[str]
) -> None:

    engine = create_engine(EngineSettings(model="tiny-random", device="cpu"), tmp_path, tmp_path)
    engine.load()
    before = np.asarray(engine.generate(default_request(steps=2)).finished())
    rest = EngineRest(engine, load_again=engine.load)

    rest.rest("pause")
    rest.rest("idle", 600)  # once is enough
    assert engine.describe()["loaded"] is False
    rest.wake()
    assert engine.describe()["loaded"] is True
    after = np.asarray(engine.generate(default_request(steps=2)).finished())
    assert np.array_equal(before, after), "the model loaded again renders as before"
    said = [line.rstrip() for line in logged if "unloaded" in line or "loaded again" in line]
    assert said[0] == "paused: the model is unloaded; it is loaded again when the pause ends"
    assert said[1].startswith("the model is loaded again, in ")
    assert len(said) == 2


def test_a_job_that_loaded_the_model_after_an_idle_unload_leaves_nothing_to_wake_and_it_can_rest_again(
    tmp_path: Path, logged: list[str]
) -> None:

    engine = create_engine(EngineSettings(model="tiny-random", device="cpu"), tmp_path, tmp_path)
    engine.load()
    rest = EngineRest(engine, load_again=engine.load)
    rest.rest("idle", 600)
    engine.generate(default_request(steps=1))  # a job claimed before the worker woke the engine
    rest.wake()
    assert not [line for line in logged if "loading the model again" in line]
    rest.rest("idle", 600)
    assert engine.is_loaded is False
    assert len([line for line in logged if "idle for 10 min: the model is unloaded" in line]) == 2


def _spied_engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the engine's unload, load and warm-up calls; each still runs."""

    calls: list[str] = []
    for name in ("unload", "load", "warm_up"):
        real = getattr(FamilyRouter, name)

        def spy(self: FamilyRouter, *args: object, _real=real, _name=name, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(FamilyRouter, name, spy)
    return calls


@pytest.mark.parametrize("unload", [True, False])
def test_a_pause_frees_the_gpu_and_resume_loads_the_model_before_the_next_job(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, unload: bool
) -> None:
    calls = _spied_engine_calls(monkeypatch)
    settings = sandbox.settings()
    engine = settings.engine.model_copy(update={"unload_when_paused": unload})
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    with RunningDaemon(settings.model_copy(update={"engine": engine})) as running:
        wait_for(lambda: len(sandbox.images()) == 1, what="the first image")
        assert running.daemon.start_timeline is not None
        start = running.daemon.start_timeline.record()
        pause_queue(sandbox.state, None)
        sandbox.drop("owl.txt", "an owl\nsteps: 2\n")
        wait_for(lambda: ("queued",) in sandbox.journal_rows("SELECT state FROM jobs"), what="owl queued")
        if unload:
            wait_for(lambda: "unload" in calls, what="the model unloaded")
        else:
            time.sleep(1.0)  # several worker ticks while paused
        assert len(sandbox.images()) == 1
        resume_queue(sandbox.state)
        wait_for(lambda: len(sandbox.images()) == 2, what="the job queued during the pause")
        assert running.daemon.start_timeline.record() == start, "a resume is not part of the start"
    after_start = calls[calls.index("warm_up") + 1 :]
    assert after_start == (["unload", "load", "warm_up"] if unload else [])


def test_an_idle_daemon_unloads_the_model_and_the_next_job_loads_it_again(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    calls = _spied_engine_calls(monkeypatch)
    settings = sandbox.settings()
    engine = settings.engine.model_copy(update={"unload_after_idle_seconds": 1.0})
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    with RunningDaemon(settings.model_copy(update={"engine": engine})):
        wait_for(lambda: len(sandbox.images()) == 1, what="the first image")
        wait_for(lambda: "unload" in calls, what="the model unloaded when idle")
        time.sleep(1.0)  # several worker ticks with nothing to do: it stays unloaded
        assert calls[-1] == "unload"
        sandbox.drop("owl.txt", "an owl\nsteps: 2\n")
        wait_for(lambda: len(sandbox.images()) == 2, what="the next job")
    after_start = calls[calls.index("warm_up") + 1 :]
    assert after_start[:3] == ["unload", "load", "warm_up"]
    said = [line.rstrip() for line in logged if "the model is unloaded" in line]
    assert said[0].startswith("idle for 1 s: the model is unloaded; it is loaded again for the next job")


def test_after_a_long_pause_the_idle_time_counts_from_the_resume(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spied_engine_calls(monkeypatch)
    settings = sandbox.settings()
    engine = settings.engine.model_copy(update={"unload_after_idle_seconds": 3.0})
    with RunningDaemon(settings.model_copy(update={"engine": engine})):
        pause_queue(sandbox.state, None)
        wait_for(lambda: "unload" in calls, what="the model unloaded for the pause")
        time.sleep(3.5)  # longer than the idle limit
        resume_queue(sandbox.state)
        wait_for(lambda: calls[-1] == "warm_up", what="the model loaded again")
        time.sleep(1.0)
        assert calls[-1] == "warm_up", "unloaded again at once, as if idle all through the pause"
        wait_for(lambda: calls[-1] == "unload", what="the idle unload, 3 s after the resume")
