"""Helpers for tests that run the real daemon (watcher, journal, tiny-random engine, outbox)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fooocusd.service.daemon import Daemon, Summary
from fooocusd.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Sandbox:
    root: Path

    def journal_rows(self, query: str) -> list[tuple]:  # type: ignore[type-arg]
        """``query``'s rows from the daemon's journal; none while it is still creating it."""
        path = self.state / "journal.sqlite3"
        if not path.exists():
            return []
        try:
            with sqlite3.connect(path) as db:
                return db.execute(query).fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            return []

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "fooocusd.toml"

    def write_config(self, extra: str = "") -> Path:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""
[paths]
inbox = "{self.inbox}"
outbox = "{self.outbox}"
done = "{self.done}"
failed = "{self.failed}"
state = "{self.state}"
models = "{self.root / "models"}"

[intake]
settle_seconds = 0.3
rescan_seconds = 2.0
pair_wait_seconds = 0.5
polling = "never"

[engine]
model = "tiny-random"
device = "cpu"

[generation]
performance = "speed"
{extra}
""",
            encoding="utf-8",
        )
        return self.config

    def settings(self) -> Settings:
        return load_settings(self.config, environ={}).settings

    def drop(self, relpath: str, content: str | bytes) -> Path:
        """Write a file the way a careful tool does: temp name, then rename into place."""
        path = self.inbox / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.partial")
        temp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(temp, path)
        return path

    def files(self, folder: Path, pattern: str = "*") -> list[Path]:
        return sorted(p for p in folder.rglob(pattern) if p.is_file()) if folder.exists() else []

    def images(self) -> list[Path]:
        return [p for p in self.files(self.outbox) if p.suffix in {".png", ".jpg", ".webp"}]

    def sidecars(self) -> list[Path]:
        return self.files(self.outbox, "*.json")

    def drain(self) -> Summary:
        """Run the daemon in this process until the inbox is drained: ``fooocusd once`` without
        the ten-second start of a new interpreter that imports torch and diffusers."""
        return Daemon(self.settings()).run(drain=True)

    def once(
        self, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``fooocusd once`` in a child process, as a user would."""
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("FOOOCUSD_")}
        child_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "fooocusd.cli", "once", "--config", str(self.config), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env,
            cwd=REPO,
        )


class RunningDaemon:
    """The daemon on a background thread, for tests that drop files while it runs."""

    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon(settings)
        self.summary: Summary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunningDaemon:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.daemon.request_stop()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the daemon did not stop"


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
