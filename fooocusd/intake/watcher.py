"""Watch the inbox and hand out each file once it has finished arriving.

Layers, from fast to certain:

* watchdog events (native, or polling on network/FUSE mounts) only *arm* the stability
  tracker; they never decide that a file is complete;
* the stability tracker decides (size, mtime, inode unchanged for ``settle_seconds``, and
  never zero bytes), confirmed by a fresh ``lstat`` at the moment of decision;
* a full ``os.scandir`` rescan at start and every ``rescan_seconds`` catches whatever events
  missed (inotify overflow, a directory moved in, remote writers, watcher gaps).

Nothing here opens a file: FIFOs, devices, sockets and (unless allowed) symlinks are reported
as refusals from their ``lstat`` alone, so a FIFO can never block the daemon.

Typical loop::

    watcher.start()
    while running:
        watcher.wait(1.0)
        for ready in watcher.poll():
            ...claim it (move it out of the inbox), then watcher.forget(ready.path)
"""

from __future__ import annotations

import os
import stat as stat_mode
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from fooocusd.errors import ConfigError
from fooocusd.intake.editor_locks import open_in_editor
from fooocusd.intake.ignore import Kind, Verdict, classify_dir, classify_name
from fooocusd.intake.mounts import (
    Mount,
    PollingMode,
    decide_polling,
    mounts_below,
    polling_reason,
    read_mounts,
)
from fooocusd.intake.scan import candidate_files
from fooocusd.intake.stability import FileStat, StabilityTracker

# Events that mean "someone is writing": they restart the settle clock.
_WRITE_EVENTS = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED})
# Readers (including ourselves) must not keep a file from settling.
_READ_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})

_LINK_HINT = "set intake.follow_symlinks = true to accept links that stay inside the inbox"


@dataclass(frozen=True)
class Ready:
    """A file that finished arriving (or was refused). Handed out once until ``forget``."""

    path: Path
    relpath: str
    kind: Kind
    size: int
    mtime_ns: int
    inode: int
    # Why it cannot be used as is: set for UNSUPPORTED, CONFLICT and refusals.
    reason: str = ""
    # Not a regular file (FIFO, device, socket, link): move it to failed/ without opening it.
    refused: bool = False
    # For CONFLICT: what the copy would be if processed (JOB, IMAGE, ...).
    conflict_kind: Kind | None = None


@dataclass(frozen=True)
class _Found:
    verdict: Verdict
    stat: FileStat
    refusal: str = ""


class _Directory:
    pass


_DIRECTORY = _Directory()


class _EventHandler(FileSystemEventHandler):
    """Forwards events to the watcher. ``note_writing`` is given only for native (inotify) watches:
    they report a close after writing, so "written to but not closed yet" can be told apart from a pause.
    Polling never sees a close, so polled folders rely on the settle time alone."""

    def __init__(
        self,
        note: Callable[[str, bool, bool], None],
        note_writing: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._note = note
        self._note_writing = note_writing

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.event_type in _READ_EVENTS:
            return
        if self._note_writing is not None and not event.is_directory:
            self._track_writer(event)
        activity = event.event_type in _WRITE_EVENTS
        if event.event_type == EVENT_TYPE_MOVED:
            self._note(os.fsdecode(event.src_path), event.is_directory, False)
            self._note(os.fsdecode(event.dest_path), event.is_directory, True)
        else:
            self._note(os.fsdecode(event.src_path), event.is_directory, activity)

    def _track_writer(self, event: FileSystemEvent) -> None:
        assert self._note_writing is not None
        if event.event_type == EVENT_TYPE_MODIFIED:
            self._note_writing(os.fsdecode(event.src_path), True)
        elif event.event_type in (EVENT_TYPE_CLOSED, EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            self._note_writing(os.fsdecode(event.src_path), False)


class InboxWatcher:
    """Thread-safe: watchdog calls back on its own threads; ``poll`` may run on any one thread."""

    def __init__(
        self,
        inbox: Path,
        *,
        settle_seconds: float = 2.0,
        rescan_seconds: float = 30.0,
        polling: PollingMode = "auto",
        poll_interval_seconds: float = 2.0,
        follow_symlinks: bool = False,
        extra_ignore: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        mounts: list[Mount] | None = None,
        open_write_wait_seconds: float = 120.0,
        editor_wait_seconds: float = 3600.0,
    ) -> None:
        self.inbox = Path(os.path.abspath(inbox))
        self.open_write_wait_seconds = open_write_wait_seconds
        self.editor_wait_seconds = editor_wait_seconds
        self.rescan_seconds = rescan_seconds
        self.polling: PollingMode = polling
        self.poll_interval_seconds = poll_interval_seconds
        self.follow_symlinks = follow_symlinks
        self.extra_ignore = list(extra_ignore)
        self.watch_mode = "not started"
        self._clock = clock
        self._mounts = mounts
        self._tracker = StabilityTracker(settle_seconds, clock)
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._dirty: dict[Path, bool] = {}
        self._dirty_dirs: set[Path] = set()
        self._handed_out: dict[Path, int] = {}
        # Files written to (native events) whose writer has not closed them yet: since when.
        self._writing: dict[Path, float] = {}
        # Job files an editor has open (``editor_locks``): since when; None once given up on.
        self._in_editor: dict[Path, float | None] = {}
        self._next_rescan: float | None = None
        self._observers: list[BaseObserver] = []
        self._watches: list[tuple[Path, bool]] = []
        self._inbox_identity: tuple[int, int] | None = None
        """(device, inode) of the inbox being watched; None while it is gone."""
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching. The first ``poll`` scans what is already there (with the settle wait)."""
        if not self.inbox.is_dir():
            raise ConfigError(
                f"the inbox {self.inbox} does not exist or is not a folder",
                hint="create it, or point paths.inbox at an existing folder",
                where="paths.inbox",
            )
        self._inbox_identity = _folder_identity(self.inbox)
        self._started = True
        self._watch()

    def _watch(self) -> None:
        mounts = read_mounts() if self._mounts is None else self._mounts
        decision = decide_polling(self.inbox, self.polling, mounts)
        main = self._start_observer(self.inbox, decision.use_polling)
        if main is None:
            self.watch_mode = f"polling every {self.poll_interval_seconds:g} s (native events unavailable)"
        elif decision.use_polling:
            self.watch_mode = f"polling every {self.poll_interval_seconds:g} s: {decision.reason}"
        else:
            self.watch_mode = f"native events: {decision.reason}"
        if not decision.use_polling and main is not None and self.polling == "auto":
            self._poll_network_submounts(mounts)
        logger.info("watching {} ({})", self.inbox, self.watch_mode)

    def stop(self) -> None:
        self._started = False
        self._stop_observers()
        self._wakeup.set()

    def _stop_observers(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
        self._observers.clear()
        self._watches.clear()

    def _inbox_still_there(self) -> bool:
        """At each rescan: the inbox is the folder being watched. One that is gone (a share
        unmounted, a sync client that moved it away) is said once and looked for again at each
        rescan; one that is back, or replaced by another folder, is watched anew, since native
        events follow the old folder."""
        identity = _folder_identity(self.inbox)
        if not self._started or identity == self._inbox_identity:
            return identity is not None
        if identity is None:
            logger.warning(
                "the inbox {} is gone (a share unmounted, or the folder moved or deleted?): fooocusd "
                "looks for it every {:g} s and carries on when it is back",
                self.inbox,
                self.rescan_seconds,
            )
        else:
            what = (
                "is back"
                if self._inbox_identity is None
                else "is another folder now (remounted or recreated?)"
            )
            logger.info("the inbox {} {}: watching it anew", self.inbox, what)
            self._stop_observers()
            try:
                self._watch()
            except OSError as exc:  # gone again already: looked for at the next rescan
                logger.warning("cannot watch the inbox {}: {}", self.inbox, exc)
                identity = None
        self._inbox_identity = identity
        return identity is not None

    def wait(self, timeout: float) -> bool:
        """Sleep until an event arrives (True) or until ``timeout``, the next possible stability
        decision or the next rescan, whichever comes first (False). Call ``poll`` afterwards."""
        now = self._clock()
        limits = [timeout]
        deadline = self._tracker.next_deadline()
        if deadline is not None:
            limits.append(deadline - now)
        if self._next_rescan is not None:
            limits.append(self._next_rescan - now)
        fired = self._wakeup.wait(max(0.0, min(limits)))
        self._wakeup.clear()
        return fired

    # -- queries ---------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> list[Ready]:
        """Files that became stable (or were refused) since the last call, each handed out once."""
        with self._poll_lock:
            now = self._clock() if now is None else now
            with self._lock:
                dirty, self._dirty = self._dirty, {}
                dirty_dirs, self._dirty_dirs = self._dirty_dirs, set()
                rescan = self._next_rescan is None or now >= self._next_rescan
                if rescan:
                    self._next_rescan = now + self.rescan_seconds
            for folder in dirty_dirs:
                dirty.setdefault(folder, False)  # _decide scans it unless it is ignored
            if rescan and self._inbox_still_there():
                for path in self._scan_tree(self.inbox):
                    dirty.setdefault(path, False)
                # Whatever we track or handed out but the scan did not find is looked at again
                # (and dropped when gone), so a file that vanished and reappears is seen anew.
                with self._lock:
                    for path in self._handed_out:
                        dirty.setdefault(path, False)
                for path in self._tracker.tracked():
                    dirty.setdefault(path, False)
            for path in self._tracker.tracked():
                if path not in dirty and self._tracker.is_due(path, now):
                    dirty[path] = False
            return self._decide(dirty, now)

    def forget(self, path: Path | str) -> None:
        """Call once a handed-out file was claimed or moved away: if a file appears again at
        this path later, it is treated as new."""
        key = Path(os.path.abspath(path))
        with self._lock:
            self._handed_out.pop(key, None)
            self._writing.pop(key, None)
        self._in_editor.pop(key, None)
        self._tracker.forget(key)

    def look_at(self, path: Path) -> None:
        """Treat ``path`` (a file or folder we just renamed in the inbox) as new, without waiting
        for its event or the next rescan."""
        self._note(str(path), os.path.isdir(path), True)

    def watches(self) -> list[tuple[Path, bool]]:
        """The running observers as (folder, polled?) pairs, for status and doctor output."""
        return list(self._watches)

    def pending(self) -> int:
        """Files seen but still waiting to become stable."""
        return len(self._tracker)

    def arriving(self) -> int:
        """Pending files that have content, and paths noticed but not looked at yet: zero-byte
        placeholders, which may never fill, don't count."""
        with self._lock:
            unseen = len(self._dirty) + len(self._dirty_dirs)
        return self._tracker.filling() + unseen

    def placeholders(self) -> list[Path]:
        """Pending zero-byte files: placeholders that wait until they fill (and may never)."""
        return [Path(str(path)) for path in self._tracker.empty()]

    # -- internals -------------------------------------------------------------------------

    def _decide(self, candidates: dict[Path, bool], now: float) -> list[Ready]:
        ready: list[Ready] = []
        queue = deque(candidates.items())
        seen: set[Path] = set()
        while queue:
            path, activity = queue.popleft()
            if path in seen:
                continue
            seen.add(path)
            found = self._inspect(path)
            if isinstance(found, _Directory):
                self._tracker.forget(path)
                queue.extend((child, False) for child in self._scan_tree(path))
                continue
            if found is None:
                self._tracker.forget(path)
                with self._lock:
                    self._handed_out.pop(path, None)
                continue
            with self._lock:
                handed_inode = self._handed_out.get(path)
                if handed_inode is not None:
                    if handed_inode == found.stat.inode:
                        continue
                    del self._handed_out[path]  # replaced by a new file: a new arrival
            if not found.refusal and (
                self._still_being_written(path, now) or self._held_by_editor(path, found, now)
            ):
                self._tracker.observe(path, found.stat, now, activity=True)  # settles from the close on
                continue
            if found.refusal or self._tracker.observe(path, found.stat, now, activity=activity):
                self._tracker.forget(path)
                with self._lock:
                    self._handed_out[path] = found.stat.inode
                ready.append(self._ready(path, found))
        return ready

    def _ready(self, path: Path, found: _Found) -> Ready:
        verdict = found.verdict
        return Ready(
            path=path,
            relpath=self._relpath(path),
            kind=Kind.UNSUPPORTED if found.refusal else verdict.kind,
            size=found.stat.size,
            mtime_ns=found.stat.mtime_ns,
            inode=found.stat.inode,
            reason=found.refusal or verdict.reason,
            refused=bool(found.refusal),
            conflict_kind=verdict.conflict_kind,
        )

    def _inspect(self, path: Path) -> _Found | _Directory | None:
        """What is at ``path`` now, from ``lstat``/``stat`` only. None: gone, ignored or unreadable."""
        try:
            relpath = self._relpath(path)
        except ValueError:
            return None
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot look at {}: {}", path, exc)
            return None
        if stat_mode.S_ISDIR(info.st_mode):
            return None if classify_dir(relpath, self.extra_ignore) else _DIRECTORY
        verdict = classify_name(relpath, self.extra_ignore)
        if verdict.kind is Kind.IGNORE:
            return None
        if stat_mode.S_ISREG(info.st_mode):
            return _Found(verdict, FileStat.of(info))
        if stat_mode.S_ISLNK(info.st_mode):
            return self._inspect_link(path, verdict, info)
        return _Found(verdict, FileStat.of(info), refusal=_not_regular_reason(info.st_mode))

    def _inspect_link(self, path: Path, verdict: Verdict, link_info: os.stat_result) -> _Found:
        link_stat = FileStat.of(link_info)
        if not self.follow_symlinks:
            return _Found(
                verdict, link_stat, refusal=f"a symbolic link; links are not followed ({_LINK_HINT})"
            )
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(Path(os.path.realpath(self.inbox))):
            return _Found(
                verdict, link_stat, refusal=f"a symbolic link pointing outside the inbox (to {target})"
            )
        try:
            info = os.stat(path)
        except OSError:
            return _Found(verdict, link_stat, refusal=f"a broken symbolic link (to {target})")
        if stat_mode.S_ISREG(info.st_mode):
            return _Found(verdict, FileStat.of(info))
        if stat_mode.S_ISDIR(info.st_mode):
            return _Found(
                verdict, link_stat, refusal="a symbolic link to a folder; links to folders are not followed"
            )
        return _Found(verdict, link_stat, refusal=f"a symbolic link to {_not_regular_reason(info.st_mode)}")

    def _scan_tree(self, top: Path) -> list[Path]:
        return candidate_files(self.inbox, top, self.extra_ignore)

    def _note(self, raw_path: str, is_directory: bool, activity: bool) -> None:
        path = Path(os.path.abspath(raw_path))
        if path == self.inbox or not path.is_relative_to(self.inbox):
            return
        with self._lock:
            if is_directory:
                # Only folders that appear need a scan; their files may have produced no events.
                if activity:
                    self._dirty_dirs.add(path)
            else:
                self._dirty[path] = self._dirty.get(path, False) or activity
        self._wakeup.set()

    def _note_writing(self, raw_path: str, writing: bool) -> None:
        path = Path(os.path.abspath(raw_path))
        with self._lock:
            if writing:
                self._writing.setdefault(path, self._clock())
            else:
                self._writing.pop(path, None)

    def _still_being_written(self, path: Path, now: float) -> bool:
        """A writer that pauses longer than the settle time keeps its file open: wait for the close,
        up to ``open_write_wait_seconds`` (a writer that never closes must not block the file forever)."""
        with self._lock:
            since = self._writing.get(path)
            if since is None:
                return False
            if now - since < self.open_write_wait_seconds:
                return True
            del self._writing[path]
        logger.warning(
            "{} is still open for writing after {:.0f} s; taking it once it stops changing",
            self._relpath(path),
            now - since,
        )
        return False

    def _held_by_editor(self, path: Path, found: _Found, now: float) -> bool:
        """A job file an editor has open waits until the editor closes it, up to ``editor_wait_seconds``."""
        if found.verdict.kind is not Kind.JOB or self.editor_wait_seconds <= 0:
            return False
        editor = open_in_editor(path)
        if editor is None:
            self._in_editor.pop(path, None)
            return False
        if path not in self._in_editor:
            self._in_editor[path] = now
            logger.info(
                "{} is open in {}: it is taken once the editor closes it", self._relpath(path), editor
            )
        since = self._in_editor[path]
        if since is None:
            return False  # given up on: a mark left behind
        if now - since < self.editor_wait_seconds:
            return True
        self._in_editor[path] = None
        logger.warning(
            "{} has been marked open by {} for {:.0f} s; taking it (a mark left behind by a crash? "
            "delete it)",
            self._relpath(path),
            editor,
            now - since,
        )
        return False

    def _relpath(self, path: Path) -> str:
        return path.relative_to(self.inbox).as_posix()

    def _start_observer(self, folder: Path, use_polling: bool) -> BaseObserver | None:
        """Start one recursive observer; a native one that fails (inotify limits) falls back to
        polling. Returns None when the fallback was needed."""
        observer: BaseObserver = (
            PollingObserver(timeout=self.poll_interval_seconds) if use_polling else Observer()
        )
        handler = _EventHandler(self._note, None if use_polling else self._note_writing)
        try:
            observer.schedule(handler, str(folder), recursive=True)
            observer.start()
        except OSError as exc:
            if use_polling:
                raise
            logger.warning(
                "native file events are unavailable for {} ({}); polling instead. "
                "Raise fs.inotify.max_user_watches / max_user_instances to use native events.",
                folder,
                exc,
            )
            _stop_quietly(observer)
            self._start_observer(folder, use_polling=True)
            return None
        self._observers.append(observer)
        self._watches.append((folder, use_polling))
        return observer

    def _poll_network_submounts(self, mounts: Iterable[Mount]) -> None:
        # A local inbox may hold a network share mounted inside it: native events would miss
        # remote changes there, so that subtree gets a polling observer of its own.
        real_inbox = Path(os.path.realpath(self.inbox))
        for mount in mounts_below(self.inbox, list(mounts)):
            reason = polling_reason(mount.fs_type)
            relpath = mount.mount_point.relative_to(real_inbox).as_posix()
            # Watch it under the inbox path we were given, so event paths match our keys.
            folder = self.inbox / relpath
            if not reason or not folder.is_dir() or classify_dir(relpath, self.extra_ignore):
                continue
            self._start_observer(folder, use_polling=True)
            logger.info("polling {} inside the inbox: {} ({})", folder, reason, mount.fs_type)


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of ``folder``; None when it is not there or not a folder."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat_mode.S_ISDIR(info.st_mode) else None


def _not_regular_reason(mode: int) -> str:
    if stat_mode.S_ISFIFO(mode):
        return "a named pipe (FIFO); only regular files are accepted"
    if stat_mode.S_ISSOCK(mode):
        return "a socket; only regular files are accepted"
    if stat_mode.S_ISCHR(mode) or stat_mode.S_ISBLK(mode):
        return "a device file; only regular files are accepted"
    return "not a regular file; only regular files are accepted"


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        observer.stop()
    except Exception:  # a half-started observer may not stop cleanly; it holds nothing we need
        logger.debug("ignoring error while stopping a failed observer")
