"""One daemon per state folder: the second is refused before it touches the journal."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.errors import ConfigError
from fooocusd.service.state_lock import LOCK_FILE_NAME, daemon_holding, state_folder_lock
from tests.daemon_harness import Sandbox


def test_a_second_holder_of_the_state_folder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with state_folder_lock(tmp_path):
        assert (tmp_path / LOCK_FILE_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}") as caught, state_folder_lock(tmp_path):
            pass
        assert "--state-dir" in caught.value.hint
    with state_folder_lock(tmp_path):  # let go at the end of the block
        pass


def test_the_lock_of_a_killed_daemon_does_not_keep_the_next_one_out(tmp_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from fooocusd.service.state_lock import state_folder_lock
        with state_folder_lock(Path({str(tmp_path)!r})):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"pid {process.pid}"), state_folder_lock(tmp_path):
            pass
    finally:
        process.kill()
        process.wait(timeout=30)
    with state_folder_lock(tmp_path):
        pass


def test_a_daemon_starting_while_status_probes_the_lock_is_not_taken_for_a_second_daemon(
    tmp_path: Path,
) -> None:
    probe = os.open(tmp_path / LOCK_FILE_NAME, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what daemon_holding holds for a moment
    threading.Timer(0.2, os.close, args=(probe,)).start()
    with state_folder_lock(tmp_path):
        assert daemon_holding(tmp_path) == str(os.getpid())


def test_a_second_start_is_refused_before_it_spends_seconds_importing_torch(sandbox: Sandbox) -> None:
    starter = (
        "import sys\nfrom fooocusd.cli import main\n"
        f"code = main(['once', '--no-progress', '--config', {str(sandbox.config)!r}])\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(code)\n"
    )
    sandbox.state.mkdir(parents=True, exist_ok=True)
    with state_folder_lock(sandbox.state):
        result = subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == "torch not imported"
    assert "is already running with the state folder" in " ".join(result.stderr.split())


def test_the_daemon_refuses_to_start_on_a_state_folder_another_daemon_holds(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("cat.txt", "a cat\nseed: 1\n")
    sandbox.state.mkdir(parents=True, exist_ok=True)
    with state_folder_lock(sandbox.state):
        assert main(["once", "--no-progress", "--config", str(sandbox.config)]) == 2
    stderr = " ".join(capsys.readouterr().err.split())
    assert f"another fooocusd (pid {os.getpid()}) is already running with the state folder" in stderr
    assert not (sandbox.state / "journal.sqlite3").exists()
    assert [p.name for p in sandbox.files(sandbox.inbox)] == ["cat.txt"]


def test_status_and_doctor_say_whether_a_daemon_holds_the_state_folder_and_leave_it_free(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("cat.txt", "a cat\nseed: 1\n")
    assert sandbox.drain().ok
    assert main(["status", "--config", str(sandbox.config)]) == 0
    assert f"daemon: not running on the state folder {sandbox.state}" in " ".join(
        capsys.readouterr().out.split()
    )

    with state_folder_lock(sandbox.state):
        assert daemon_holding(sandbox.state) == str(os.getpid())
        assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
        daemon = json.loads(capsys.readouterr().out)["daemon"]
        assert daemon == {"running": True, "pid": os.getpid(), "starting": False}
        main(["doctor", "--config", str(sandbox.config)])
        assert f"running (pid {os.getpid()})" in " ".join(capsys.readouterr().out.split())
        assert daemon_holding(sandbox.state) == str(os.getpid()), "probing did not take the lock away"

    assert daemon_holding(sandbox.state) is None
    with state_folder_lock(sandbox.state):  # and the probes left it free for the next daemon
        pass


class _Loaded(Exception):
    """Raised where the daemon would load torch and its model."""


@pytest.mark.parametrize("command", [["run"], ["once", "--no-progress"]], ids=["run", "once"])
def test_run_and_once_hold_the_state_folder_before_the_daemon_loads_torch_and_its_model(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # Seconds of imports and model loading: status must see a daemon, and a second one be refused.
    from fooocusd.service.daemon import Daemon

    seen: list[tuple[str | None, bool]] = []

    def loading(self: Daemon, *, drain: bool = False, state_locked: bool = False) -> None:
        seen.append((daemon_holding(sandbox.state), state_locked))
        raise _Loaded

    monkeypatch.setattr(Daemon, "run", loading)
    with pytest.raises(_Loaded):
        main([*command, "--config", str(sandbox.config)])
    assert seen == [(str(os.getpid()), True)]
    assert daemon_holding(sandbox.state) is None  # and let go when the command ends, however it ends
