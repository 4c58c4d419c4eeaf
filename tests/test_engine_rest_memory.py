"""Waiting for room on the GPU (``engine_rest.py``): a model load that runs out of GPU memory,
at the start or when the model comes back after a pause or an idle unload, frees what it had
loaded and waits for room instead of stopping the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fooocusd.cli import main
from fooocusd.engine.router import FamilyRouter
from fooocusd.errors import ModelNotFound, OutOfMemory
from fooocusd.service import engine_rest
from fooocusd.service.engine_rest import EngineRest
from fooocusd.service.model_presence import ModelAway, model_away, record_model_away
from fooocusd.service.pause import pause_queue, resume_queue
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for


def _cuda_out_of_memory() -> torch.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class _Engine:
    """A stand-in with the engine's load/unload surface; ``fail_loads`` loads run out of memory."""

    def __init__(self, fail_loads: int = 0, error: BaseException | None = None) -> None:
        self.fail_loads = fail_loads
        self.error = error
        self.is_loaded = False
        self.calls: list[str] = []

    def load(self) -> None:
        self.calls.append("load")
        if self.fail_loads:
            self.fail_loads -= 1
            raise self.error or _cuda_out_of_memory()
        self.is_loaded = True

    def unload(self) -> None:
        self.calls.append("unload")
        self.is_loaded = False

    def describe(self) -> dict[str, object]:
        return {"device": "cpu"}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_start_without_room_on_the_gpu_frees_what_it_loaded_and_waits_instead_of_failing(
    logged: list[str],
) -> None:
    engine, changes = _Engine(fail_loads=1), []
    rest = EngineRest(engine, load_again=engine.load, on_change=changes.append)  # type: ignore[arg-type]

    assert rest.load_at_start(engine.load) is False
    assert rest.resting_for == "memory" and rest.no_room == "the GPU has no room for the model"
    assert engine.calls == ["load", "unload"]  # what the failed load left is freed
    assert changes == [False]
    said = [line.rstrip() for line in logged]
    assert said == [
        "the GPU has no room for the model: fooocusd keeps taking files in, runs no job, and loads the "
        "model once there is room (it looks every 30 s). Close the program that holds the GPU's memory, "
        "or set engine.vram = 'low' (SDXL in about 2.5 GiB)"
    ]


def test_while_waiting_for_room_it_tries_again_every_retry_and_says_so_once_until_it_loads(
    logged: list[str],
) -> None:
    engine, changes, clock = _Engine(fail_loads=3), [], _Clock()
    rest = EngineRest(engine, load_again=engine.load, on_change=changes.append, clock=clock)  # type: ignore[arg-type]
    assert rest.load_at_start(engine.load) is False

    assert not rest.due()
    clock.now += engine_rest.MEMORY_RETRY_SECONDS
    assert rest.due()
    assert rest.wake() is False  # still no room: the wait goes on, quietly
    assert rest.resting_for == "memory" and not rest.due()
    clock.now += engine_rest.MEMORY_RETRY_SECONDS
    assert rest.wake() is False
    clock.now += engine_rest.MEMORY_RETRY_SECONDS
    assert rest.wake() is True

    assert rest.resting_for is None and rest.no_room == "" and engine.is_loaded
    assert changes == [False, True]
    warnings = [line for line in logged if "no room" in line]
    assert len(warnings) == 1
    assert logged[-1].rstrip() == "there is room on the GPU now: the model is loaded, after 2 min of waiting"


def test_it_tries_again_only_once_more_gpu_memory_is_free_than_after_the_failed_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gib = 1024**3
    free = [2 * gib]  # what the game leaves, as the GPU reports it
    monkeypatch.setattr(engine_rest, "gpu_memory", lambda device: (free[0], 24 * gib))
    engine, clock = _Engine(fail_loads=1), _Clock()
    rest = EngineRest(engine, load_again=engine.load, clock=clock)  # type: ignore[arg-type]
    assert rest.load_at_start(engine.load) is False
    said = "the GPU has no room for the model (2.0 of 24.0 GiB free; other programs hold the rest)"
    assert rest.no_room == said

    clock.now += engine_rest.MEMORY_RETRY_SECONDS
    free[0] = int(2.5 * gib)
    assert not rest.due()  # half a GiB more: not worth a load that would take the game's memory
    clock.now += 10 * engine_rest.MEMORY_RETRY_SECONDS
    free[0] = int(3.5 * gib)
    assert rest.due()
    assert rest.wake() is True and engine.calls == ["load", "unload", "load"]


@pytest.mark.parametrize("why", ["pause", "idle"])
def test_a_model_that_finds_no_room_when_it_comes_back_waits_for_room(why: str, logged: list[str]) -> None:
    engine = _Engine()
    rest = EngineRest(engine, load_again=engine.load)  # type: ignore[arg-type]
    engine.load()
    rest.rest(why)  # type: ignore[arg-type]
    engine.fail_loads = 1

    assert rest.wake() is False
    assert rest.resting_for == "memory"
    assert any("the GPU has no room for the model: fooocusd keeps taking files in" in line for line in logged)


def test_an_out_of_memory_error_from_the_engine_is_taken_as_no_room_too() -> None:
    engine = _Engine(fail_loads=1, error=OutOfMemory("the accelerator ran out of memory rendering 1024x1024"))
    rest = EngineRest(engine, load_again=engine.load)  # type: ignore[arg-type]
    assert rest.load_at_start(engine.load) is False and rest.resting_for == "memory"


def test_without_waiting_no_room_at_the_start_is_an_error_with_the_hint() -> None:
    engine = _Engine(fail_loads=1)
    rest = EngineRest(engine, load_again=engine.load)  # type: ignore[arg-type]
    with pytest.raises(OutOfMemory) as raised:
        rest.load_at_start(engine.load, wait=False)
    assert raised.value.message == "the GPU has no room for the model"
    assert raised.value.hint.startswith("close the program that holds the GPU's memory")


def test_other_load_failures_are_not_taken_for_a_lack_of_room() -> None:
    engine = _Engine(fail_loads=1, error=RuntimeError("CUDA error: an illegal memory access"))
    rest = EngineRest(engine, load_again=engine.load)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="illegal memory access"):
        rest.load_at_start(engine.load)
    engine = _Engine(fail_loads=1, error=ModelNotFound("cannot read /models/x.safetensors"))
    rest = EngineRest(engine, load_again=engine.load)  # type: ignore[arg-type]
    with pytest.raises(ModelNotFound):
        rest.load_at_start(engine.load)


def _loads_out_of_memory(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """The real engine's next ``times`` loads run out of GPU memory (as with a game holding it)."""
    calls: list[str] = []
    real = FamilyRouter.load

    def load(self: FamilyRouter) -> None:
        calls.append("load")
        if calls.count("load") <= times:
            raise _cuda_out_of_memory()
        real(self)

    monkeypatch.setattr(FamilyRouter, "load", load)
    monkeypatch.setattr(engine_rest, "MEMORY_RETRY_SECONDS", 0.3)
    return calls


def test_a_daemon_started_while_another_program_holds_the_gpu_takes_files_in_and_renders_once_there_is_room(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    calls = _loads_out_of_memory(monkeypatch, times=3)
    with RunningDaemon(sandbox.settings()) as running:
        sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
        wait_for(lambda: len(sandbox.images()) == 1, what="the image, once the model loaded")
    assert running.error is None
    assert calls.count("load") == 4
    states = sandbox.journal_rows("SELECT state, attempts FROM jobs")
    assert states == [("done", 1)], "the wait used none of the job's attempts"
    assert any(line.startswith("there is room on the GPU now: the model is loaded") for line in logged)


def test_a_resume_that_finds_no_room_waits_and_then_runs_the_queued_job(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunningDaemon(sandbox.settings()) as running:
        pause_queue(sandbox.state, None)
        wait_for(lambda: _resting_for(running) == "pause", what="the pause's unload")
        calls = _loads_out_of_memory(monkeypatch, times=2)
        sandbox.drop("owl.txt", "an owl\nsteps: 2\n")
        wait_for(lambda: ("queued",) in sandbox.journal_rows("SELECT state FROM jobs"), what="owl queued")
        resume_queue(sandbox.state)
        wait_for(lambda: len(sandbox.images()) == 1, what="the job, once the model loaded again")
    assert running.error is None, "the worker did not stop on the failed loads"
    assert calls.count("load") == 3


def _resting_for(running: RunningDaemon) -> str | None:
    rest = running.daemon._engine_rest  # (None until the daemon has made it)
    return rest.resting_for if rest is not None else None


def test_once_without_room_on_the_gpu_says_so_and_exits_with_an_error(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _loads_out_of_memory(monkeypatch, times=1)
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")
    code = main(["once", "--no-progress", "--config", str(sandbox.config)])
    said = " ".join(capsys.readouterr().err.split())
    assert code != 0
    assert "the GPU has no room for the model" in said and "engine.vram = 'low'" in said


def test_the_retry_interval_is_documented_as_thirty_seconds() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert engine_rest.MEMORY_RETRY_SECONDS == 30.0
    assert "looks every 30 s: once at least 1 GiB more is free, it tries again" in " ".join(readme.split())


def test_status_says_the_model_waits_for_room_while_it_does_and_nothing_once_the_daemon_stopped(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _loads_out_of_memory(monkeypatch, times=1)
    monkeypatch.setattr(engine_rest, "MEMORY_RETRY_SECONDS", 600.0)  # it stays waiting
    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: _resting_for(running) == "memory", what="the wait for room")
        wait_for(lambda: model_away(sandbox.state) is not None, what="the note for status")
        capsys.readouterr()
        assert main(["status", "--config", str(sandbox.config)]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert "model: not loaded: waiting for room on the GPU since " in said
        assert (
            "(the GPU has no room for the model); no job runs until it loads, tried again once more memory "
            "is free" in said
        )
        assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["model_away"]["why"] == "memory"
    assert model_away(sandbox.state) is None


def test_status_says_the_model_left_the_gpu_for_the_pause(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunningDaemon(sandbox.settings()) as running:
        pause_queue(sandbox.state, None)
        wait_for(lambda: _resting_for(running) == "pause", what="the pause's unload")
        capsys.readouterr()
        assert main(["status", "--config", str(sandbox.config)]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert "model: unloaded for the pause since " in said and "; loaded again on resume" in said
        resume_queue(sandbox.state)
        wait_for(lambda: _resting_for(running) is None, what="the model back")
        assert model_away(sandbox.state) is None


def test_a_note_a_crashed_daemon_left_is_not_shown_and_a_new_start_clears_it(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    record_model_away(sandbox.state, "memory", "the GPU has no room for the model")
    noted = model_away(sandbox.state)
    assert noted == ModelAway("memory", noted.since if noted else 0.0, "the GPU has no room for the model")
    capsys.readouterr()
    assert main(["status", "--config", str(sandbox.config)]) == 0
    assert "model:" not in capsys.readouterr().out  # no daemon holds the state folder
    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: running.daemon._engine_rest is not None, what="the start's model load")
        assert model_away(sandbox.state) is None
