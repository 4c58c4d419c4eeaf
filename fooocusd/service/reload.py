"""SIGHUP: read the configuration, presets and styles again without a restart.

The new configuration comes from the same file, environment and command-line overrides as at
start. It is checked completely before anything changes (TOML and values, folders that nest, the
model, every preset, the styles); a problem refuses the whole reload and the old settings stay.
Settings that cannot change in a running daemon (folders, device and dtype, the inbox watcher,
the metrics server) keep their old values, with a warning naming each key.

The main loop applies the rest at once (intake, finishing, hooks); the GPU worker picks it up
before its next job, so the image being rendered is never interrupted and a job never mixes
settings. Wildcard files are read for every job anyway, so they need no reload.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import ConfigError
from fooocusd.intake.layout import check_folder_layout
from fooocusd.service.folders import Folders
from fooocusd.service.logs import configure_logging
from fooocusd.service.notify import Notifier, ServiceReporter
from fooocusd.service.settings_checks import check_configuration
from fooocusd.settings import LoadedSettings, Settings, flatten, load_settings

if TYPE_CHECKING:
    from fooocusd.service.finisher import Finisher
    from fooocusd.service.hooks import PostJobHooks
    from fooocusd.service.intake_stage import IntakeStage
    from fooocusd.service.metrics import ReloadResult
    from fooocusd.service.notify import WorkerPulse
    from fooocusd.service.worker import Worker

# Dotted keys (or "section." prefixes) read once at start: a reload keeps their old values.
RESTART_ONLY = (
    "paths.",
    "engine.",  # device, dtype, attention...; except LIVE_DESPITE_PREFIX (see needs_restart)
    "intake.settle_seconds",
    "intake.open_write_wait_seconds",
    "intake.editor_wait_seconds",
    "intake.rescan_seconds",
    "intake.polling",
    "intake.poll_interval_seconds",
    "intake.follow_symlinks",
    "intake.ignore_patterns",
    "intake.pair_wait_seconds",
    "metrics.",
    "hooks.queue_size",
)
LIVE_DESPITE_PREFIX = frozenset(  # read per job, or whenever the worker is idle
    {"engine.model", "engine.unload_when_paused", "engine.unload_after_idle_seconds"}
)


def needs_restart(key: str) -> bool:
    if key in LIVE_DESPITE_PREFIX:
        return False
    return any(key.startswith(rule) if rule.endswith(".") else key == rule for rule in RESTART_ONLY)


@dataclass(frozen=True)
class SettingsSource:
    """Where the running settings came from, so that a reload reads the same places."""

    config_file: Path | None
    cli_overrides: Mapping[str, Any]
    environ: Mapping[str, str]

    @classmethod
    def from_loaded(cls, loaded: LoadedSettings, environ: Mapping[str, str] | None = None) -> SettingsSource:
        values = flatten(loaded.settings)
        from_cli = [key for key, origin in loaded.sources.items() if origin == "cli" and key in values]
        cli = {key: values[key] for key in from_cli}
        return cls(loaded.config_file, cli, dict(os.environ if environ is None else environ))

    def load(self) -> Settings:
        return load_settings(self.config_file, dict(self.cli_overrides), dict(self.environ)).settings


@dataclass(frozen=True)
class ReloadPlan:
    settings: Settings
    styles: StyleLibrary
    changed: list[str]  # keys whose new value takes effect
    kept: list[str]  # keys that changed in the file but need a restart
    warning: str | None = None  # applied all the same: model files the new defaults need but lack


def prepare_reload(
    current: Settings, source: SettingsSource, folders: Folders, preset_dirs: list[Path]
) -> ReloadPlan:
    """The checked new settings and styles. Raises ``ConfigError`` saying why they are refused."""
    fresh = source.load()
    check_folder_layout(fresh)
    settings, kept = keep_restart_only_values(current, fresh)
    checked = check_configuration(settings, folders.models, folders.styles, preset_dirs)
    old, new = flatten(current), flatten(settings)
    changed = sorted(key for key in new if new[key] != old.get(key))
    return ReloadPlan(
        settings=settings, styles=checked.styles, changed=changed, kept=kept, warning=checked.warning
    )


def keep_restart_only_values(current: Settings, fresh: Settings) -> tuple[Settings, list[str]]:
    """``fresh`` with every restart-only key set back to its ``current`` value, and those keys."""
    old, new = flatten(current), flatten(fresh)
    kept = sorted(key for key in new if needs_restart(key) and new[key] != old.get(key))
    if not kept:
        return fresh, []
    data = fresh.model_dump(by_alias=True)
    before = current.model_dump(by_alias=True)
    for key in kept:
        section, name = key.split(".", 1)
        data[section][name] = before[section][name]
    return Settings(**data), kept


class Reloader:
    """Takes reload requests (signal-safe), checks the new settings, hands them to the worker."""

    def __init__(
        self,
        source: SettingsSource | None,
        notifier: Notifier,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.notifier = notifier
        self.on_result = on_result
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._for_worker: ReloadPlan | None = None

    @property
    def available(self) -> bool:
        return self.source is not None

    def request(self) -> None:
        """Only sets a flag: safe from a signal handler. The main loop does the work."""
        self._requested.set()

    def requested(self) -> bool:
        return self._requested.is_set()

    def reload(
        self, current: Settings, folders: Folders, preset_dirs: list[Path], reporter: ServiceReporter
    ) -> ReloadPlan | None:
        """Check and stage the new settings; None when refused (the reason is logged)."""
        self._requested.clear()
        self.notifier.reloading()
        try:
            if self.source is None:
                raise ConfigError(
                    "this daemon was not started from a configuration it can read again",
                    hint="start it with `fooocusd run` to use SIGHUP / systemctl reload",
                )
            logger.info("reloading the configuration, presets and styles")
            plan = prepare_reload(current, self.source, folders, preset_dirs)
        except ConfigError as exc:
            reason = exc.message.splitlines()[0]
            logger.error("reload refused, the running configuration stays: {}", exc.explain())
            reporter.note = f"reload refused: {reason}"
            self.notifier.status(f"reload refused: {reason}")
            self.notifier.ready()
            self._report("refused")
            return None
        if plan.warning:
            logger.warning("reload: {}", plan.warning)
        for key in plan.kept:
            logger.warning("reload: {} changed, but keeps its old value: restart to apply", key)
        applied = [key for key in plan.changed if key not in plan.kept]
        logger.info("reloaded: {}", ", ".join(applied) if applied else "no setting changed")
        with self._lock:
            self._for_worker = plan
        reporter.note = None
        self.notifier.status("reloaded" + (f"; restart to apply {', '.join(plan.kept)}" if plan.kept else ""))
        self.notifier.ready()
        self._report("applied")
        return plan

    def staged_for_worker(self) -> bool:
        """Whether a plan waits for the worker (it then claims no further job until it applied it)."""
        with self._lock:
            return self._for_worker is not None or self._requested.is_set()

    def take_for_worker(self) -> ReloadPlan | None:
        """The newest plan the worker has not applied yet (called between its jobs)."""
        with self._lock:
            plan, self._for_worker = self._for_worker, None
        return plan

    def _report(self, result: ReloadResult) -> None:
        if self.on_result is not None:
            self.on_result(result)


def apply_on_main_thread(
    plan: ReloadPlan,
    *,
    intake: IntakeStage,
    finisher: Finisher,
    pulse: WorkerPulse,
    hooks: PostJobHooks | None,
    previous: Settings,
) -> None:
    """Everything the main loop owns takes the new settings now."""
    intake.settings, intake.styles = plan.settings, plan.styles
    finisher.settings = plan.settings
    pulse.stale_after = plan.settings.journal.lease_seconds
    if hooks is not None:
        hooks.settings = plan.settings.hooks
    if plan.settings.logging != previous.logging:
        configure_logging(plan.settings.logging.level, plan.settings.logging.json_logs)


def apply_to_worker(plan: ReloadPlan, worker: Worker) -> None:
    """On the worker thread, between jobs."""
    worker.adopt_settings(plan.settings, plan.styles)
