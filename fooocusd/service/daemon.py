"""The daemon: intake on the main thread, one GPU worker thread, clean stops.

``Daemon.run()`` serves until stopped; ``Daemon.run(drain=True)`` exits once the inbox is
empty and every job has ended (``fooocusd once``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from loguru import logger

from fooocusd.engine.base import Engine
from fooocusd.engine.expansion import PromptExpansion, build_prompt_expansion
from fooocusd.engine.factory import create_engine
from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import ConfigError, DiskWait, FooocusdError, GpuLost
from fooocusd.intake.pairing import Pairer
from fooocusd.intake.readable_names import is_readable, rename_readable, shown, why_unreadable
from fooocusd.intake.watcher import InboxWatcher, Ready
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.journal.journal import Journal, no_room_to_open, unfinished_jobs
from fooocusd.journal.space import journal_full
from fooocusd.service.engine_rest import EngineRest
from fooocusd.service.extras import DaemonExtras
from fooocusd.service.finisher import Finisher
from fooocusd.service.folders import Folders, prepare_folders
from fooocusd.service.free_space import low_disks
from fooocusd.service.intake_refusals import as_takeable, refusal_for
from fooocusd.service.intake_stage import IntakeStage
from fooocusd.service.intake_trouble import IntakeTrouble
from fooocusd.service.journal_upkeep import JournalUpkeep
from fooocusd.service.model_presence import record_model_away, record_model_loaded
from fooocusd.service.notify import (
    MODEL_LOAD_EXTENSION_SECONDS,
    Notifier,
    ServiceReporter,
    WorkerPulse,
)
from fooocusd.service.pause import current_pause
from fooocusd.service.queue_estimate import estimate_queue
from fooocusd.service.reconcile import reconcile
from fooocusd.service.reload import Reloader, SettingsSource, apply_on_main_thread, apply_to_worker
from fooocusd.service.settings_checks import check_configuration
from fooocusd.service.start_timeline import StartTimeline
from fooocusd.service.state_lock import state_folder_lock
from fooocusd.service.warm_up import warm_up, warm_up_request
from fooocusd.service.worker import ProgressSink, Worker
from fooocusd.settings import Settings
from fooocusd.space_wait import FullDiskLog, SpaceWait, retry_until_room

_TICK = 0.2
_STALE_CHECK_EVERY = 30.0


@dataclass
class Summary:
    queued_jobs: int
    jobs_done: int
    jobs_failed: int
    images_written: int
    inputs_failed: int
    duplicates_skipped: int
    empty_files_left: tuple[str, ...] = ()
    """Zero-byte files still in the inbox when ``run(drain=True)`` ended (they wait to fill)."""
    left_paused: int = 0
    """Jobs left queued because ``fooocusd pause`` held the queue when ``run(drain=True)`` ended."""
    inputs_unmoved: int = 0
    """Inputs whose jobs ended but that could not be moved out of processing/ (the next start does)."""

    @property
    def ok(self) -> bool:
        return self.jobs_failed == 0 and self.inputs_failed == 0 and self.inputs_unmoved == 0


def _log_what_waits(journal: Journal, unmoved: int) -> None:
    """The last line of a stop: what the next start will pick up, so nobody wonders if it was lost."""
    waiting = unfinished_jobs(journal.status()["counts"])
    parts = []
    if waiting:
        parts.append(f"{waiting} job(s) wait in the journal and run")
    if unmoved:
        parts.append(f"{unmoved} input(s) wait in processing/ to be moved to done/ or failed/")
    if parts:
        logger.info("stopped: {} at the next start", "; ".join(parts))
    else:
        logger.info("stopped: nothing was waiting")


def _empty_files_left(watcher: InboxWatcher, inbox: Path) -> tuple[str, ...]:
    names = sorted(
        shown(path.relative_to(inbox).as_posix() if path.is_relative_to(inbox) else str(path))
        for path in watcher.placeholders()
    )
    if names:
        logger.warning("left in the inbox: {} (empty: a file is taken once it has content)", ", ".join(names))
    return tuple(names)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        progress_sink: ProgressSink | None = None,
        notifier: Notifier | None = None,
        settings_source: SettingsSource | None = None,
        timed_from_process_start: bool = True,
    ) -> None:
        self.settings = settings
        # False where the process ran other work first (a benchmark, an embedding program): the
        # start is then timed from ``run``, not from the process's start.
        self.timed_from_process_start = timed_from_process_start
        self.progress_sink = progress_sink
        self.notifier = notifier if notifier is not None else Notifier.from_environment()
        # A worker silent longer than its job lease is as dead to systemd as it is to the journal.
        self.pulse = WorkerPulse(stale_after=settings.journal.lease_seconds)
        self.stop_intake = threading.Event()
        self.intake_trouble = IntakeTrouble()
        self.stop_now = threading.Event()
        self._wake_worker = threading.Event()
        self.paused = threading.Event()
        """Set while ``fooocusd pause`` holds the queue (``pause.py``); followed at every tick."""
        self._worker_error: BaseException | None = None
        # SIGHUP re-reads the settings from here; None (e.g. `once`): SIGHUP keeps its default.
        self.reloader = Reloader(settings_source, self.notifier, on_result=self._count_reload)
        self.extras: DaemonExtras | None = None  # metrics endpoint and post-job hooks, while running
        self.start_timeline: StartTimeline | None = None
        """The last ``run``'s start, step by step (``start_timeline.py``)."""
        self._engine_rest: EngineRest | None = None  # unloads the model while paused or idle

    def run(self, *, drain: bool = False, state_locked: bool = False) -> Summary:
        """Serve until stopped (or, with ``drain``, until the inbox is empty). ``state_locked``: the
        caller holds the state folder's lock already (``fooocusd run`` takes it before importing
        torch)."""
        timeline = StartTimeline.begin(from_process_start=self.timed_from_process_start)
        self.start_timeline = timeline
        folders = prepare_folders(self.settings)
        with nullcontext() if state_locked else state_folder_lock(folders.state):
            return self._start_and_serve(folders, timeline, drain=drain)

    def _start_and_serve(self, folders: Folders, timeline: StartTimeline, *, drain: bool) -> Summary:
        os.umask(self.settings.outbox.umask)
        preset_dirs = preset_search_dirs(folders.presets)
        # A broken preset or style file, or defaults no job could run with, stop the start.
        checked = check_configuration(self.settings, folders.models, folders.styles, preset_dirs)
        styles = checked.styles
        if checked.warning:
            logger.warning(checked.warning)
        for space in low_disks({"outbox": folders.outbox, "state folder": folders.state}):
            logger.warning("only {}; when it is full the daemon waits for room", space.describe())
        timeline.reached("settings, presets and styles")
        # Resolving the model comes first: without one, say where to put it and stop.
        engine = create_engine(self.settings.engine, folders.models, folders.cache, self.settings.controlnet)
        expansion = build_prompt_expansion(self.settings.engine, folders.models)  # "Fooocus V2"
        # Stable across restarts, so the next start knows the running jobs it finds were its own.
        owner = f"{socket.gethostname()}:{folders.state}:{self.settings.engine.device}"
        journal = self._open_journal(folders.journal_db, owner)
        journal.space_wait = SpaceWait(keep_waiting=self._waiting_for_space, sleep=self.stop_intake.wait)
        self.extras = DaemonExtras(self.settings, folders.journal_db)
        timeline.reached("engine and journal opened")
        try:
            self.extras.start()
            self.notifier.extend_timeout(MODEL_LOAD_EXTENSION_SECONDS)
            self.notifier.status("checking the journal against the folders")
            reconcile(journal, folders, max_crashes=self.settings.journal.max_crashes)
            timeline.reached("journal checked against the folders")

            def warm() -> bool:
                if not self.settings.engine.warm_up:
                    return False
                self.notifier.extend_timeout(MODEL_LOAD_EXTENSION_SECONDS)
                self.notifier.status("warming up: compiling the UNet or reading its compiled code back")
                warm_up(
                    engine,
                    lambda: warm_up_request(self.settings, folders, preset_dirs, styles, expansion),
                    should_stop=self.stop_intake.is_set,
                )
                return True

            with contextlib.suppress(OSError):  # (a file an earlier run left, say by a crash)
                record_model_loaded(folders.state)
            rest = self._engine_rest = EngineRest(
                engine,
                load_again=lambda: (engine.load(), warm()),
                on_change=lambda loaded: self._model_changed(folders.state, loaded),
            )
            logger.info("loading the model…")
            self.notifier.extend_timeout(MODEL_LOAD_EXTENSION_SECONDS)
            self.notifier.status(f"loading the model {self.settings.engine.model or '(auto)'}")
            # No room on the GPU (another program holds it): a daemon starts without the model and
            # waits for room; `once` (drain) says so and stops.
            loaded = rest.load_at_start(engine.load, wait=not drain)
            timeline.reached("model")
            if loaded:
                timeline.details["model"] = dict(engine.describe().get("load_steps_s") or {})
            expansion.preload()  # a broken expansion folder stops the start, not a job later
            timeline.reached("prompt expansion")
            if loaded and warm():
                timeline.reached("warm-up render")
            return self._serve(
                folders, journal, engine, preset_dirs, styles, drain, expansion=expansion, timeline=timeline
            )
        finally:
            self.extras.stop()
            journal.close()
            with contextlib.suppress(OSError):
                record_model_loaded(folders.state)  # no daemon: nothing for `status` to say

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """First signal: finish the current image, then stop. Second: abandon it too."""
        if self.stop_intake.is_set():
            logger.warning("second stop request: abandoning the current image")
            self.stop_now.set()
        else:
            name = signal.Signals(signum).name if signum else "stop"
            logger.info("{}: finishing the current image, then stopping (again to stop at once)", name)
            self.stop_intake.set()
            self.notifier.stopping()
            self.notifier.status("stopping: finishing the current image")
        self._wake_worker.set()

    def request_reload(self, _signum: int | None = None, _frame: FrameType | None = None) -> None:
        """SIGHUP: the main loop re-reads the configuration; the worker takes it between jobs."""
        self.reloader.request()

    def install_signal_handlers(self) -> dict[int, Any]:
        """Route SIGTERM and SIGINT to ``request_stop`` (and SIGHUP to ``request_reload`` when the
        daemon knows where its settings came from); returns the previous handlers."""
        handlers = {
            signum: signal.signal(signum, self.request_stop) for signum in (signal.SIGTERM, signal.SIGINT)
        }
        if self.reloader.available:
            handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.request_reload)
        return handlers

    # -- the loop ------------------------------------------------------------------------------

    def _serve(
        self,
        folders: Folders,
        journal: Journal,
        engine: Engine,
        preset_dirs: list[Path],
        styles: StyleLibrary,
        drain: bool,
        *,
        expansion: PromptExpansion | None = None,
        timeline: StartTimeline | None = None,
    ) -> Summary:
        intake_settings = self.settings.intake
        watcher = InboxWatcher(
            folders.inbox,
            settle_seconds=intake_settings.settle_seconds,
            rescan_seconds=intake_settings.rescan_seconds,
            polling=intake_settings.polling,
            poll_interval_seconds=intake_settings.poll_interval_seconds,
            follow_symlinks=intake_settings.follow_symlinks,
            extra_ignore=intake_settings.ignore_patterns,
            open_write_wait_seconds=intake_settings.open_write_wait_seconds,
            editor_wait_seconds=intake_settings.editor_wait_seconds,
        )
        hooks = self.extras.hooks if self.extras is not None else None
        intake = IntakeStage(
            self.settings,
            folders,
            journal,
            preset_dirs,
            styles,
            on_refused=hooks.on_input_refused if hooks is not None else None,
        )
        pairer = Pairer(intake_settings.pair_wait_seconds, named_by=intake.files_named_by)
        finisher = Finisher(self.settings, folders, journal)
        worker = Worker(
            self.settings,
            folders,
            journal,
            engine,
            preset_dirs,
            styles=styles,
            stop_now=self.stop_now,
            stop_after_image=self.stop_intake,
            paused=self.paused,
            progress_sink=self._on_progress,
            events=self.extras.worker_events() if self.extras else None,
            expansion=expansion,
        )
        # A job claimed while a reload waits would be prepared with the old settings.
        worker.may_claim = lambda: not self.reloader.staged_for_worker()
        reporter = ServiceReporter(self.notifier, self.pulse)
        self._follow_pause(folders.state, reporter)  # before the worker's first claim
        worker_thread = threading.Thread(
            target=self._work, args=(worker,), name="fooocusd-worker", daemon=True
        )
        watcher.start()
        worker_thread.start()
        self.notifier.ready()
        if timeline is not None:
            timeline.reached("watching the inbox")
            logger.info("ready: watching {}, {}", folders.inbox, timeline.summary())
        else:
            logger.info("ready: watching {}", folders.inbox)
        if self.extras is not None:
            rest = self._engine_rest
            self.extras.ready(timeline, model_loaded=rest is None or rest.resting_for is None)
        last_stale_check = time.monotonic()
        upkeep = JournalUpkeep(journal)
        try:
            while not self.stop_intake.is_set():
                self._intake_once(watcher, pairer, intake)
                finisher.finish_ready()
                if self.reloader.requested():
                    self._reload(folders, preset_dirs, intake, finisher, reporter)
                reporter.tick(
                    journal.status,
                    lambda: estimate_queue(journal, self.settings, preset_dirs).seconds_left,
                )
                if time.monotonic() - last_stale_check > _STALE_CHECK_EVERY:
                    last_stale_check = time.monotonic()
                    journal.recover_stale_jobs(max_crashes=self.settings.journal.max_crashes)
                upkeep.tick(self.settings.journal.keep_days)
                self._follow_pause(folders.state, reporter)
                if self._worker_error is not None:
                    raise self._worker_error
                if drain and self._drained(watcher, pairer, journal, finisher):
                    break
                watcher.wait(_TICK)
        finally:
            watcher.stop()
            self.stop_intake.set()
            self._wake_worker.set()
            while worker_thread.is_alive():
                reporter.while_stopping()
                worker_thread.join(_TICK)
            finisher.finish_ready()
            if not drain:
                _log_what_waits(journal, finisher.unmoved)
        return Summary(
            queued_jobs=intake.counts.queued_jobs,
            jobs_done=worker.counts.jobs_done,
            jobs_failed=worker.counts.jobs_failed,
            images_written=worker.counts.images_written,
            inputs_failed=intake.counts.failed_inputs + finisher.failed_inputs,
            duplicates_skipped=intake.counts.skipped_duplicates,
            empty_files_left=_empty_files_left(watcher, folders.inbox) if drain else (),
            left_paused=journal.status()["counts"].get("queued", 0) if drain and self.paused.is_set() else 0,
            inputs_unmoved=finisher.unmoved,
        )

    def _intake_once(self, watcher: InboxWatcher, pairer: Pairer, intake: IntakeStage) -> None:
        ready = watcher.poll()
        takeable = []
        for item in ready:
            if not is_readable(item.relpath):
                self._rename_unreadable(watcher, item)
                continue
            refusal = refusal_for(item, self.settings.intake.conflict_copies)
            if refusal is None:
                takeable.append(as_takeable(item))
                continue
            reason, hint = refusal
            try:
                intake.refuse(item.path, item.relpath, reason, hint)
                self.intake_trouble.taken(item.relpath)
            except (OSError, FooocusdError) as exc:  # failed/ full or unwritable: at the next rescan
                self.intake_trouble.cannot_take(item.relpath, exc, doing="move {} to failed/")
            watcher.forget(item.path)
        pairer.offer(takeable)
        for drop in pairer.release():
            relpath = drop.parts[0].relpath
            try:
                intake.take(drop)
                self.intake_trouble.taken(relpath)
            except FileNotFoundError:
                logger.info("{} vanished before it could be taken", relpath)
            except (OSError, FooocusdError) as exc:  # a full disk, a folder it may not write
                self.intake_trouble.cannot_take(relpath, exc)
            except Exception:  # one odd file must not stop the daemon
                logger.exception("could not take {}; it is tried again at the next rescan", relpath)
            for part in drop.parts:
                watcher.forget(part.path)
            self._wake_worker.set()

    def _rename_unreadable(self, watcher: InboxWatcher, item: Ready) -> None:
        """A name that is not UTF-8, or holds control characters, is renamed in place; the renamed
        file is taken like any other."""
        watcher.forget(item.path)
        name = shown(item.relpath)
        try:
            renamed = rename_readable(watcher.inbox, item.relpath)
        except FileNotFoundError:  # its folder was renamed for an earlier file: seen under the new name
            return
        except OSError as exc:
            self.intake_trouble.cannot_take(name, exc, doing="rename {} to a readable name")
            return
        self.intake_trouble.taken(name)
        what = "it was" if renamed.is_file() else "its folder was"
        logger.warning(
            "{}: {}, so {} renamed to {}",
            name,
            why_unreadable(item.relpath),
            what,
            renamed.relative_to(watcher.inbox).as_posix(),
        )
        watcher.look_at(renamed)

    def _work(self, worker: Worker) -> None:
        busy_at = time.monotonic()
        try:
            while not self.stop_intake.is_set():
                plan = self.reloader.take_for_worker()  # between jobs: an image is never interrupted
                if plan is not None:
                    apply_to_worker(plan, worker)
                if self._wake_engine_if_wanted(worker):
                    busy_at = time.monotonic()  # the idle time counts from the model's return
                if self._waiting_for_room():
                    self._wake_worker.wait(_TICK)
                    self._wake_worker.clear()
                    continue
                self.pulse.job_started()
                try:
                    ran = worker.run_one()
                finally:
                    self.pulse.job_ended()
                if ran:
                    busy_at = time.monotonic()
                else:
                    self._rest_engine_if_due(time.monotonic() - busy_at)
                    self._wake_worker.wait(_TICK)
                    self._wake_worker.clear()
            worker.close()  # the last image still lands; jobs held for a batch go back to the queue
        except GpuLost as exc:  # said whole by the main thread's caller; no traceback to add
            self._worker_error = exc
        except BaseException as exc:  # surfaced on the main thread, which stops the daemon
            logger.exception("the worker stopped")
            self._worker_error = exc

    def _rest_engine_if_due(self, idle_seconds: float) -> None:
        """Nothing renders now: while paused, or after ``unload_after_idle_seconds`` without a job,
        the model leaves the GPU for other programs."""
        rest, engine = self._engine_rest, self.settings.engine
        if rest is None:
            return
        if self.paused.is_set() and engine.unload_when_paused:
            rest.rest("pause")
        elif 0 < engine.unload_after_idle_seconds <= idle_seconds:
            rest.rest("idle", idle_seconds)

    def _wake_engine_if_wanted(self, worker: Worker) -> bool:
        """Before a claim: load the model again once a pause has ended, after an idle unload once a
        job waits, and while waiting for room on the GPU at each retry; whether it loaded."""
        rest = self._engine_rest
        if rest is None or rest.resting_for is None or self.paused.is_set() or not rest.due():
            return False
        if rest.resting_for in ("pause", "memory") or worker.journal.next_runnable_jobs(1):
            return rest.wake()
        return False

    def _model_changed(self, state: Path, loaded: bool) -> None:
        """The model left the GPU or came back: for the metrics and ``fooocusd status``."""
        if self.extras is not None:
            self.extras.set_model_loaded(loaded)
        rest = self._engine_rest
        try:
            if loaded or rest is None or rest.resting_for is None:
                record_model_loaded(state)
            else:
                record_model_away(state, rest.resting_for, rest.no_room)
        except OSError as exc:  # only `status` misses it
            logger.debug("could not note the model's state for `fooocusd status`: {}", exc)

    def _waiting_for_room(self) -> bool:
        """No room on the GPU for the model: no job runs (none would fit) until it loads."""
        rest = self._engine_rest
        if rest is None or rest.resting_for != "memory":
            return False  # (the worker's next job_started clears the pulse's wait)
        self.pulse.waiting(f"waiting for GPU memory: {rest.no_room}")
        return True

    def _reload(
        self,
        folders: Folders,
        preset_dirs: list[Path],
        intake: IntakeStage,
        finisher: Finisher,
        reporter: ServiceReporter,
    ) -> None:
        plan = self.reloader.reload(self.settings, folders, preset_dirs, reporter)
        if plan is None:
            return
        hooks = self.extras.hooks if self.extras else None
        apply_on_main_thread(
            plan, intake=intake, finisher=finisher, pulse=self.pulse, hooks=hooks, previous=self.settings
        )
        self.settings = plan.settings
        self._wake_worker.set()

    def _count_reload(self, result: str) -> None:
        if self.extras is not None:
            self.extras.count_reload(result)

    def _on_progress(self, label: str, done_steps: int, total_steps: int) -> None:
        self.pulse.progressed(label, done_steps, total_steps)
        if self.progress_sink is not None:
            self.progress_sink(label, done_steps, total_steps)

    def _drained(self, watcher: InboxWatcher, pairer: Pairer, journal: Journal, finisher: Finisher) -> bool:
        """The inbox is taken in, every job has ended, and every input was moved or failed to move;
        while paused, queued jobs stay queued."""
        if watcher.arriving() or pairer.holding():
            return False
        status = journal.status()
        waiting = ("claiming", "running") if self.paused.is_set() else ("claiming", "queued", "running")
        busy = sum(status["counts"].get(state, 0) for state in waiting)
        return busy == 0 and not finisher.pending()

    def _open_journal(self, db_path: Path, owner: str) -> Journal:
        """The journal; on a disk too full to open it, wait for room rather than exit: under
        systemd an exit would be restarted a few times, then given up on until someone noticed."""

        def attempt() -> Journal:
            try:
                return Journal.open(db_path, owner=owner)
            except ConfigError as exc:
                if no_room_to_open(db_path):
                    raise journal_full(db_path) from exc
                raise

        def keep_waiting(full: DiskWait) -> bool:
            self.notifier.extend_timeout(MODEL_LOAD_EXTENSION_SECONDS)
            return self._waiting_for_space(full)

        wait = SpaceWait(keep_waiting=keep_waiting, sleep=self.stop_intake.wait)
        return retry_until_room(attempt, wait, FullDiskLog("the journal"))

    def _waiting_for_space(self, full: DiskWait) -> bool:
        """A journal or outbox write found the disk full (or its share gone): keep waiting (and tell
        systemd we are alive and why) unless a stop was asked for."""
        self.pulse.waiting(f"waiting for {full.waiting_for}: {full.message}")
        self.notifier.status(f"waiting for {full.waiting_for}: {full.message}")
        self.notifier.watchdog()
        return not self.stop_intake.is_set()

    def _follow_pause(self, state: Path, reporter: ServiceReporter) -> None:
        """Start or end a pause when ``fooocusd pause`` / ``resume`` (or its end time) changed it."""
        pause = current_pause(state)
        if (pause is not None) != self.paused.is_set():
            reporter.paused = pause is not None
            if self.extras is not None:
                self.extras.set_paused(pause is not None)
        if pause is not None and not self.paused.is_set():
            self.paused.set()
            logger.info(
                "{}: no job starts until `fooocusd resume`; a running job stops after its current image "
                "and stays queued; files dropped meanwhile are taken in and queued",
                pause.describe(),
            )
        elif pause is None and self.paused.is_set():
            self.paused.clear()
            self._wake_worker.set()
            logger.info("resumed: jobs start again")
