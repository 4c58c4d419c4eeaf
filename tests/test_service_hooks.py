"""Post-job hooks: a command and a webhook hear about every job that ended, never blocking it."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from fooocusd.errors import ConfigError
from fooocusd.service.hooks import PostJobHooks, command_argv
from fooocusd.settings import HooksSettings, load_settings
from tests.daemon_harness import Sandbox

# Writes what the hook receives (stdin and the FOOOCUSD_* variables) to the file named in argv[1].
RECORDER = """
import json, os, sys
event = json.load(sys.stdin)
env = {name: value for name, value in os.environ.items() if name.startswith("FOOOCUSD_")}
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps({"stdin": event, "env": env}) + "\\n")
"""

# Starts a grandchild, records both pids, then hangs.
HANGER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(120)
"""


def _hooks_config(sandbox: Sandbox, body: str) -> None:
    sandbox.write_config(f"\n[hooks]\n{body}\n")


def _script(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return path


def _record_hook_events(sandbox: Sandbox, tmp_path: Path, extra: str = "") -> Path:
    """Configure the RECORDER as the hook command; returns the file it appends each event to."""
    recorder = _script(tmp_path, "recorder.py", RECORDER)
    received = tmp_path / "received.jsonl"
    argv = json.dumps([sys.executable, str(recorder), str(received)])
    _hooks_config(sandbox, f"command = {argv}\n{extra}")
    return received


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of ours that nobody reaped yet is a zombie: dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1].split()[0] != "Z"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def test_command_hook_gets_the_event_json_on_stdin_and_the_job_in_its_environment(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    received = _record_hook_events(sandbox, tmp_path)
    sandbox.drop("cat.txt", "a cat\nseed: 5\nsteps: 2\n")

    assert sandbox.drain().ok

    [record] = _records(received)
    event, env = record["stdin"], record["env"]
    assert event["event"] == "done" and event["state"] == "done" and event["error"] is None
    assert event["input"] == "cat.txt"
    [image] = sandbox.images()
    [output] = event["outputs"]
    assert output["path"] == str(image)
    assert output["sidecar"]["seed"] == 5 and output["sidecar"]["prompt"] == "a cat"
    assert output["sidecar"] == json.loads(image.with_suffix(".json").read_text())
    assert env["FOOOCUSD_EVENT"] == "done"
    assert env["FOOOCUSD_JOB_ID"] == str(event["job_id"])
    assert env["FOOOCUSD_INPUT"] == "cat.txt"
    assert env["FOOOCUSD_OUTPUTS"] == str(image)


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fooocusd", received
    server.shutdown()
    server.server_close()


def test_webhook_receives_the_job_and_its_sidecar_as_a_json_post(
    sandbox: Sandbox, webhook_server: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = webhook_server
    _hooks_config(sandbox, f'webhook_url = "{url}"')
    sandbox.drop("dog.txt", "a dog\nseed: 7\nsteps: 2\n")

    assert sandbox.drain().ok

    [(path, content_type, body)] = received
    assert path == "/fooocusd" and content_type == "application/json"
    event = json.loads(body)
    assert event["event"] == "done" and event["input"] == "dog.txt"
    [image] = sandbox.images()
    assert event["outputs"][0]["sidecar"] == json.loads(image.with_suffix(".json").read_text())


def test_hanging_hook_is_killed_with_its_children_after_the_timeout_and_jobs_go_on(
    sandbox: Sandbox, tmp_path: Path, log_lines: list[str]
) -> None:
    hanger = _script(tmp_path, "hanger.py", HANGER)
    pids = tmp_path / "pids.txt"
    _hooks_config(
        sandbox, f"command = {json.dumps([sys.executable, str(hanger), str(pids)])}\ntimeout_seconds = 1.0"
    )
    sandbox.drop("one.txt", "first\nseed: 1\nsteps: 2\n")
    sandbox.drop("two.txt", "second\nseed: 2\nsteps: 2\n")

    summary = sandbox.drain()

    assert summary.ok and summary.jobs_done == 2 and len(sandbox.images()) == 2
    assert (sandbox.done / "one.txt").exists() and (sandbox.done / "two.txt").exists()
    started = [line.split() for line in pids.read_text().splitlines()]
    assert len(started) == 2, "each job's hook ran, one after the other"
    for hook_pid, child_pid in started:
        assert not _alive(int(hook_pid)) and not _alive(int(child_pid))
    assert sum("timeout_seconds = 1; killed" in line for line in log_lines) == 2


def test_failing_job_fires_failed_with_the_error_and_on_picks_the_outcomes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    received = _record_hook_events(sandbox, tmp_path, 'on = ["failed"]')
    sandbox.drop("fine.txt", "fine\nsteps: 2\n")
    sandbox.drop("bad.toml", 'prompt = "a cat"\nmodel = "missing.safetensors"\n')

    summary = sandbox.drain()

    assert summary.jobs_done == 1 and summary.jobs_failed == 1
    [record] = _records(received)  # "done" is not in hooks.on
    event = record["stdin"]
    assert event["event"] == "failed" and event["state"] == "failed" and event["input"] == "bad.toml"
    assert "missing.safetensors" in event["error"] and event["outputs"] == []
    assert record["env"]["FOOOCUSD_EVENT"] == "failed" and record["env"]["FOOOCUSD_OUTPUTS"] == ""


def test_a_file_refused_at_intake_fires_refused_with_its_reason_and_where_it_went(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    received = _record_hook_events(sandbox, tmp_path)
    sandbox.drop("cats/bad.toml", 'prompt = "a cat"\nimagse = 2\n')

    assert not sandbox.drain().ok

    [record] = _records(received)
    event, env = record["stdin"], record["env"]
    assert event["event"] == "refused" and event["state"] == "refused" and event["job_id"] is None
    assert event["input"] == "cats/bad.toml" and "imagse" in event["error"]
    assert event["failed_paths"] == [str(sandbox.failed / "cats" / "bad.toml")]
    assert event["outputs"] == []
    assert env["FOOOCUSD_EVENT"] == "refused" and env["FOOOCUSD_JOB_ID"] == ""
    assert env["FOOOCUSD_INPUT"] == "cats/bad.toml"


def test_full_hook_queue_drops_the_event_with_a_warning_and_never_blocks(
    tmp_path: Path, log_lines: list[str]
) -> None:
    dropped: list[bool] = []
    hooks = PostJobHooks(
        HooksSettings(command="true", queue_size=1),
        tmp_path / "journal.sqlite3",
        on_dropped=lambda: dropped.append(True),
    )  # not started: nothing drains the queue

    hooks.on_job_finished(1, "done", None)
    hooks.on_job_finished(2, "failed", "boom")

    assert dropped == [True]
    assert any("event of job 2 is dropped" in line for line in log_lines)


def test_hook_command_string_is_split_like_a_shell_but_run_without_one() -> None:
    assert command_argv("notify-send 'image ready' --urgency=low") == [
        "notify-send",
        "image ready",
        "--urgency=low",
    ]
    assert command_argv(["/bin/echo", "a b"]) == ["/bin/echo", "a b"]
    assert command_argv("") == []


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('command = "notify \'unclosed"', "hooks.command"),
        ('webhook_url = "example.com/hook"', "hooks.webhook_url"),
        ('on = ["finished"]', "hooks.on"),
    ],
)
def test_invalid_hook_settings_are_refused_naming_the_key(tmp_path: Path, line: str, named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[hooks]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert named in str(caught.value)
