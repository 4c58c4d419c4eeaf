"""SIGHUP reload: new config, presets and styles for the next job; a bad config changes nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from loguru import logger

from fooocusd.errors import ConfigError
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.service.daemon import Daemon
from fooocusd.service.folders import Folders
from fooocusd.service.notify import Notifier
from fooocusd.service.reload import SettingsSource, needs_restart, prepare_reload
from fooocusd.settings import load_settings
from tests.daemon_harness import Sandbox, wait_for

STYLE = """category = "Tests"

[[style]]
name = "Reload Test"
prompt = "{{prompt}}, {words}"
negative = ""
"""


def _config(sandbox: Sandbox, template: str, *, preset: str = "mine", extra: str = "") -> None:
    """The sandbox config plus user presets/styles folders, a preset, a style and a name template."""
    sandbox.write_config(
        f'preset = "{preset}"\nstyles = ["Reload Test"]\n\n[outbox]\nname_template = "{template}"\n{extra}'
    )
    text = sandbox.config.read_text()
    folders = f'presets = "{sandbox.root / "presets"}"\nstyles = "{sandbox.root / "styles"}"\n\n[intake]'
    sandbox.config.write_text(text.replace("[intake]", folders, 1))


def _preset_and_style(sandbox: Sandbox, negative: str, words: str) -> None:
    (sandbox.root / "presets").mkdir(exist_ok=True)
    (sandbox.root / "presets" / "mine.toml").write_text(f'negative = "{negative}"\nsteps = 2\n')
    (sandbox.root / "styles").mkdir(exist_ok=True)
    (sandbox.root / "styles" / "mine.toml").write_text(STYLE.format(words=words))


def _sidecar(image: Path) -> dict[str, object]:
    return json.loads(image.with_suffix(".json").read_text())


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


@contextmanager
def _running(sandbox: Sandbox, notifier: Notifier | None = None) -> Iterator[Daemon]:
    """The daemon on a thread, reloadable from ``sandbox.config`` like `fooocusd run`."""
    loaded = load_settings(sandbox.config, environ={})
    daemon = Daemon(
        loaded.settings,
        notifier=notifier or Notifier(None),
        settings_source=SettingsSource.from_loaded(loaded, environ={}),
    )
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors


class _FakeSystemd:
    """A notify socket read continuously, as systemd does (a full datagram queue blocks senders)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except TimeoutError:
                continue

    def __enter__(self) -> _FakeSystemd:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()


def _reloads_logged(lines: list[str], word: str) -> int:
    return sum(word in line for line in lines)


def test_reload_gives_the_next_job_the_new_config_preset_and_style_and_never_changes_a_running_one(
    sandbox: Sandbox, log_lines: list[str]
) -> None:
    _preset_and_style(sandbox, "old negative", "old style words")
    _config(sandbox, "{stem}_old_{index}")
    sandbox.drop("first.txt", "a cat\nimages: 3\nseed: 10\n")

    with _running(sandbox) as daemon:
        wait_for(lambda: len(sandbox.sidecars()) >= 1, what="the first image")
        _preset_and_style(sandbox, "new negative", "new style words")
        _config(sandbox, "{stem}_new_{index}")
        daemon.request_reload()
        wait_for(lambda: _reloads_logged(log_lines, "reloaded:") == 1, what="the reload")
        sandbox.drop("second.txt", "a dog\nseed: 20\n")
        wait_for(lambda: (sandbox.done / "second.txt").exists(), what="the second job")

    first = sorted(p.name for p in sandbox.images() if p.name.startswith("first"))
    assert first == ["first_old_0.png", "first_old_1.png", "first_old_2.png"], (
        "the running job kept its settings"
    )
    assert (sandbox.done / "first.txt").exists()
    for image in sandbox.images():
        if image.name.startswith("first"):
            assert _sidecar(image)["negative"] == "old negative"
    [second] = [p for p in sandbox.images() if p.name.startswith("second")]
    assert second.name == "second_new_0.png"
    record = _sidecar(second)
    assert record["negative"] == "new negative" and record["steps"] == 2
    assert "new style words" in json.dumps(record["full_prompt"])
    assert any("outbox.name_template" in line for line in log_lines if "reloaded:" in line)


def test_sighup_refuses_a_broken_config_keeps_the_old_one_then_applies_a_fixed_one(
    sandbox: Sandbox, log_lines: list[str]
) -> None:
    _preset_and_style(sandbox, "kept negative", "kept words")
    _config(sandbox, "{stem}_old_{index}")
    notify_dir = Path(tempfile.mkdtemp(prefix="fd-"))  # AF_UNIX paths must stay short
    with (
        _FakeSystemd(notify_dir / "notify") as systemd,
        _running(sandbox, Notifier(str(systemd.path))) as daemon,
    ):
        previous = daemon.install_signal_handlers()  # this (the main) thread runs the handler
        try:
            sandbox.config.write_text(sandbox.config.read_text() + "\n[outbox\nbroken = \n")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: _reloads_logged(log_lines, "reload refused") == 1, what="the refusal")
            sandbox.drop("a.txt", "a cat\nseed: 1\n")
            wait_for(lambda: (sandbox.done / "a.txt").exists(), what="the job after the refusal")

            _config(sandbox, "{stem}_new_{index}")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: _reloads_logged(log_lines, "reloaded:") == 1, what="the reload")
            sandbox.drop("b.txt", "a dog\nseed: 2\n")
            wait_for(lambda: (sandbox.done / "b.txt").exists(), what="the job after the reload")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    messages = systemd.messages

    assert sorted(p.name for p in sandbox.images()) == ["a_old_0.png", "b_new_0.png"]
    [refusal] = [line for line in log_lines if "reload refused" in line]
    assert "not valid TOML" in refusal
    reloading = [m for m in messages if m.startswith("RELOADING=1")]
    assert len(reloading) == 2 and all("\nMONOTONIC_USEC=" in m for m in reloading)
    refused_status = [m for m in messages if m.startswith("STATUS=reload refused:")]
    assert refused_status and "not valid TOML" in refused_status[0]
    after_refusal = messages[messages.index(reloading[0]) :]
    assert "READY=1" in after_refusal, "systemd hears the reload is over, even when refused"


@pytest.fixture
def folders_of(sandbox: Sandbox) -> Folders:
    _preset_and_style(sandbox, "n", "w")
    _config(sandbox, "{stem}_{index}")
    folders = Folders.from_paths(sandbox.settings().paths.resolved())
    folders.inbox.mkdir(parents=True, exist_ok=True)
    return folders


def _prepare(sandbox: Sandbox, folders: Folders):  # type: ignore[no-untyped-def]
    current = load_settings(sandbox.config, environ={})
    source = SettingsSource.from_loaded(current, environ={})
    return current.settings, lambda: prepare_reload(
        current.settings, source, folders, preset_search_dirs(folders.presets)
    )


def test_settings_that_need_a_restart_keep_their_old_value_and_are_named(
    sandbox: Sandbox, folders_of: Folders, log_lines: list[str]
) -> None:
    current, prepare = _prepare(sandbox, folders_of)
    text = sandbox.config.read_text()
    text = text.replace('device = "cpu"', 'device = "cpu"\ndtype = "float32"')
    text = text.replace(f'outbox = "{sandbox.outbox}"', f'outbox = "{sandbox.root / "elsewhere"}"')
    text = text.replace("settle_seconds = 0.3", "settle_seconds = 5")
    sandbox.config.write_text(text.replace("{stem}_{index}", "{stem}-{index}"))

    plan = prepare()

    assert plan.kept == ["engine.dtype", "intake.settle_seconds", "paths.outbox"]
    assert plan.settings.engine.dtype == current.engine.dtype
    assert plan.settings.paths.outbox == current.paths.outbox
    assert plan.settings.intake.settle_seconds == 0.3
    assert plan.settings.outbox.name_template == "{stem}-{index}"
    assert "outbox.name_template" in plan.changed


def test_a_reload_to_defaults_whose_lora_is_missing_applies_and_says_what_to_fetch(
    sandbox: Sandbox, folders_of: Folders
) -> None:
    _, prepare = _prepare(sandbox, folders_of)
    assert prepare().warning is None
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace('performance = "speed"', 'performance = "lightning"'))

    plan = prepare()

    assert plan.settings.generation.performance == "lightning"
    assert plan.warning is not None
    assert "sdxl_lightning_4step_lora.safetensors" in plan.warning
    assert "fooocusd models fetch sdxl_lightning_4step_lora" in plan.warning


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda text, box: text.replace('model = "tiny-random"', 'model = "nowhere.safetensors"'), "nowhere"),
        (
            lambda text, box: text.replace(f'outbox = "{box.outbox}"', f'outbox = "{box.inbox / "out"}"'),
            "inbox",
        ),
        (lambda text, box: text.replace('preset = "mine"', 'preset = "no-such-preset"'), "no-such-preset"),
        (lambda text, box: text.replace('styles = ["Reload Test"]', 'styles = ["No Such Style"]'), "No Such"),
        (lambda text, box: text.replace("[outbox]", '[outbox]\nformat = "gif"'), "outbox.format"),
        (lambda text, box: text.replace('preset = "mine"', 'preset = "mine"\nsampler = "warp"'), "warp"),
        (lambda text, box: text.replace('preset = "mine"', 'preset = "mine"\nscheduler = "lcm"'), "lcm"),
    ],
    ids=[
        "missing-model",
        "nested-folders",
        "unknown-preset",
        "unknown-style",
        "bad-value",
        "unknown-sampler",
        "unusable-scheduler",
    ],
)
def test_an_invalid_new_config_is_refused_with_the_reason(
    sandbox: Sandbox,
    folders_of: Folders,
    change,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    _, prepare = _prepare(sandbox, folders_of)
    sandbox.config.write_text(change(sandbox.config.read_text(), sandbox))
    with pytest.raises(ConfigError) as caught:
        prepare()
    assert reason in caught.value.explain()


def test_a_broken_preset_file_refuses_the_reload(sandbox: Sandbox, folders_of: Folders) -> None:
    _, prepare = _prepare(sandbox, folders_of)
    (sandbox.root / "presets" / "other.toml").write_text("steps = [\n")
    with pytest.raises(ConfigError) as caught:
        prepare()
    assert "other.toml" in caught.value.message


def test_reload_reads_the_same_cli_overrides_and_environment_as_the_start(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[intake]\nsettle_seconds = 5\n")
    environ = {"FOOOCUSD_JOURNAL__MAX_ATTEMPTS": "7"}
    loaded = load_settings(config, {"engine.model": "tiny-random"}, environ)
    source = SettingsSource.from_loaded(loaded, environ)
    config.write_text("[intake]\nsettle_seconds = 9\n[engine]\nmodel = 'from-file'\n")

    again = source.load()

    assert again.intake.settle_seconds == 9
    assert again.engine.model == "tiny-random"  # the command line still wins
    assert again.journal.max_attempts == 7


def test_what_needs_a_restart() -> None:
    assert needs_restart("paths.inbox") and needs_restart("engine.device") and needs_restart("metrics.port")
    assert not needs_restart("engine.model")
    assert not needs_restart("generation.cfg") and not needs_restart("hooks.command")
