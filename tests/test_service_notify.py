"""sd_notify messages, captured by a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fooocusd.service.notify import (
    STOP_EXTENSION_SECONDS,
    Notifier,
    ServiceReporter,
    WorkerPulse,
)
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for


class FakeSystemd:
    """A bound datagram socket that collects every message sent to $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode("utf-8"))
            except BlockingIOError:
                return self.messages

    def fields(self) -> list[str]:
        return [field for message in self.collect() for field in message.split("\n")]


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    path = f"/tmp/fooocusd-notify-{uuid.uuid4().hex}.sock"
    sock = _bound(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield FakeSystemd(sock, path)
    finally:
        sock.close()
        os.unlink(path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_message_arrives_as_one_datagram(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment()
    notifier.ready()
    notifier.status("queued 2,\nrunning 1")
    notifier.extend_timeout(300)
    notifier.stopping()
    assert systemd.collect() == [
        "READY=1",
        "STATUS=queued 2, running 1",
        "EXTEND_TIMEOUT_USEC=300000000",
        "STOPPING=1",
    ]


def test_abstract_namespace_socket_is_reached_through_the_at_sign() -> None:
    name = f"fooocusd-test-{uuid.uuid4().hex}"
    sock = _bound("\0" + name)
    try:
        Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.send("READY=1") is False


def test_watchdog_pings_at_half_the_interval_systemd_asked_for(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval == 15.0
    notifier.watchdog()
    assert systemd.collect() == ["WATCHDOG=1"]


def test_watchdog_meant_for_another_process_is_not_pinged(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert systemd.collect() == []


def test_idle_worker_is_healthy_however_long_it_waits() -> None:
    clock = FakeClock()
    pulse = WorkerPulse(stale_after=60, clock=clock)
    clock.now += 10_000
    assert pulse.healthy()


def test_busy_worker_is_stale_once_it_reports_no_progress_for_too_long() -> None:
    clock = FakeClock()
    pulse = WorkerPulse(stale_after=60, clock=clock)
    pulse.job_started()
    clock.now += 50
    pulse.progressed("cat.txt", 3, 30)
    clock.now += 60
    assert pulse.healthy()
    clock.now += 1
    assert not pulse.healthy()
    pulse.job_ended()
    assert pulse.healthy()


def test_watchdog_pings_stop_while_the_worker_is_stuck_and_resume_when_it_moves(
    systemd: FakeSystemd,
) -> None:
    clock = FakeClock()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "20000000"})
    pulse = WorkerPulse(stale_after=60, clock=clock)
    reporter = ServiceReporter(notifier, pulse, clock=clock)
    status = {"counts": {"queued": 2, "running": 1}}

    def pings_after(seconds: float) -> int:
        before = systemd.fields().count("WATCHDOG=1")
        clock.now += seconds
        reporter.tick(lambda: status)
        return systemd.fields().count("WATCHDOG=1") - before

    pulse.job_started()
    assert pings_after(0) == 1
    assert pings_after(5) == 0  # not due yet: every 10 s (half of 20 s)
    assert pings_after(10) == 1
    assert pings_after(60) == 0  # 75 s without a step: a hung CUDA call
    assert pings_after(10) == 0
    pulse.progressed("cat.txt", 4, 30)
    assert pings_after(10) == 1


def test_status_line_shows_queue_depth_and_current_step(systemd: FakeSystemd) -> None:
    clock = FakeClock()
    pulse = WorkerPulse(stale_after=60, clock=clock)
    reporter = ServiceReporter(Notifier.from_environment(), pulse, clock=clock)
    pulse.job_started()
    pulse.progressed("cats/cat.txt #2", 7, 30)
    reporter.tick(lambda: {"counts": {"queued": 3, "running": 1}})
    clock.now += 1
    reporter.tick(lambda: {"counts": {"queued": 9, "running": 1}})  # throttled
    assert systemd.collect() == ["STATUS=queued 3, running 1; cats/cat.txt #2: step 7/30"]


def test_a_worker_waiting_for_room_on_a_full_disk_stays_healthy_and_status_says_why(
    systemd: FakeSystemd,
) -> None:
    clock = FakeClock()
    pulse = WorkerPulse(stale_after=60, clock=clock)
    reporter = ServiceReporter(Notifier.from_environment(), pulse, clock=clock)
    pulse.job_started()
    pulse.progressed("cat.txt", 30, 30)
    for _ in range(10):  # ten minutes of waits, each pause a sign of life
        clock.now += 59
        pulse.waiting("waiting for room: disk full while writing /out/cat_1_0.png")
        assert pulse.healthy()
    reporter.tick(lambda: {"counts": {"queued": 0, "running": 1}})
    pulse.progressed("dog.txt", 1, 30)
    clock.now += 10
    reporter.tick(lambda: {"counts": {"queued": 0, "running": 1}})
    assert systemd.collect() == [
        "STATUS=queued 0, running 1; cat.txt: step 30/30; "
        "waiting for room: disk full while writing /out/cat_1_0.png",
        "STATUS=queued 0, running 1; dog.txt: step 1/30",
    ]


def test_status_line_says_how_long_the_queue_will_take_while_jobs_wait(systemd: FakeSystemd) -> None:
    clock = FakeClock()
    reporter = ServiceReporter(
        Notifier.from_environment(), WorkerPulse(stale_after=60, clock=clock), clock=clock
    )
    reporter.tick(lambda: {"counts": {"queued": 40, "running": 1}}, lambda: 840.0)
    clock.now += 10
    reporter.tick(lambda: {"counts": {"queued": 0, "running": 0}}, lambda: 0.0)
    assert systemd.collect() == [
        "STATUS=queued 40, running 1 (about 14 min left)",
        "STATUS=queued 0, running 0",
    ]


def test_stop_timeout_is_extended_only_while_the_worker_moves(systemd: FakeSystemd) -> None:
    clock = FakeClock()
    pulse = WorkerPulse(stale_after=60, clock=clock)
    reporter = ServiceReporter(Notifier.from_environment(), pulse, clock=clock)
    pulse.job_started()
    reporter.while_stopping()
    clock.now += 61
    reporter.while_stopping()
    assert systemd.collect() == [f"EXTEND_TIMEOUT_USEC={int(STOP_EXTENSION_SECONDS * 1e6)}"]


def test_daemon_extends_the_start_timeout_then_is_ready_after_the_model_loaded_and_says_stopping(
    sandbox: Sandbox, systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_model_load: list[list[str]] = []
    monkeypatch.setattr(
        "fooocusd.service.daemon.create_engine", _engine_factory_recording(systemd, at_model_load)
    )
    running = RunningDaemon(sandbox.settings())
    with running:
        wait_for(lambda: "READY=1" in systemd.fields(), what="READY=1")
        sandbox.drop("cat.txt", "a cat\nseed: 5\n")
        wait_for(lambda: len(sandbox.sidecars()) == 1, what="the image")
        wait_for(lambda: any(f.startswith("STATUS=queued") for f in systemd.fields()), what="STATUS=")
    fields = systemd.fields()
    assert running.error is None
    [before_ready] = at_model_load
    assert "READY=1" not in before_ready
    assert any(field.startswith("EXTEND_TIMEOUT_USEC=") for field in before_ready)
    assert "STOPPING=1" in fields[fields.index("READY=1") :]


def _engine_factory_recording(systemd: FakeSystemd, at_model_load: list[list[str]]) -> Callable[..., Any]:
    """The real engine, whose load() notes what systemd had heard by the time it returned."""
    from fooocusd.service import daemon

    real_create = daemon.create_engine

    def create(*args: Any, **kwargs: Any) -> Any:
        engine = real_create(*args, **kwargs)
        real_load = engine.load

        def load() -> None:
            real_load()
            at_model_load.append(list(systemd.fields()))

        engine.load = load
        return engine

    return create
