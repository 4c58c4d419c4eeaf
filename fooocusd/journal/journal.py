"""The durable journal: every input, job and output the daemon knows about, in one SQLite file.

Life of a dropped file, and the calls the daemon makes::

    begin_claim ─(daemon moves files into processing/)→ complete_claim   (or abandon_claim)
    claim_next_job → heartbeat … → finish_job | fail_or_retry | retry_later | release_interrupted
    inputs_ready_to_finish → begin_finish ─(daemon moves files to done/ or failed/)→ complete_finish
    retry_job ─(if already finished: daemon moves files back)→ complete_reopen

Every state change and its audit event are written in one ``BEGIN IMMEDIATE`` transaction with
``synchronous=FULL``, so a change the caller saw succeed survives a crash or power loss. Several
daemon processes (one per GPU) may share one file on the same host; ``claim_next_job`` never hands
the same job to two of them. Do not put the file on a network share (WAL needs shared memory).

Owners: pass an ``owner`` that is stable across restarts of the same worker (e.g. ``host:cuda:0``),
so that ``recover_stale_jobs(at_startup=True)`` can take back the jobs a crashed predecessor held
without waiting for their leases to expire. Two live processes must never share an owner.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Self

from fooocusd.errors import ConfigError, FooocusdError, TransientError
from fooocusd.journal.rows import (
    EventRow,
    FileRole,
    InputFileRow,
    InputRow,
    InputState,
    JobRow,
    JobState,
    Outcome,
    OutputRow,
    RefusalRow,
    RetryPlan,
    event_from_row,
    input_file_from_row,
    input_from_row,
    job_from_row,
    output_from_row,
    refusal_from_row,
)
from fooocusd.journal.schema import SCHEMA_VERSION, check_not_newer, migrate, schema_version
from fooocusd.journal.space import is_disk_full, journal_full, waits_for_space
from fooocusd.space_wait import FullDiskLog, SpaceWait

Clock = Callable[[], float]

BUSY_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_CRASHES = 2
DEFAULT_MAX_RETRY_DELAY_SECONDS = 1800.0
# A job still matters to its input's files while it is not terminal, or while a worker still
# holds it (cancelled while running, not yet acknowledged). One parameter: now.
_UNSETTLED_JOB_SQL = (
    "(j.state NOT IN ('done', 'failed', 'cancelled') OR (j.lease_owner IS NOT NULL AND j.lease_expires > ?))"
)

# Queued jobs in the order they are claimed: highest priority, then oldest. One parameter: now.
_RUNNABLE_NOW_SQL = "state = 'queued' AND not_before <= ? ORDER BY priority DESC, id"


# For a job's input ``i``: a later input came in under the same name (the file, fixed, dropped again).
_DROPPED_AGAIN = (
    "EXISTS (SELECT 1 FROM inputs later WHERE later.relpath = i.relpath AND later.id > i.id"
    " AND later.state != 'abandoned')"
)


class JournalError(FooocusdError):
    """The requested change is not possible in the current state (the message says why)."""


class OutputNameTaken(JournalError):
    """Another output already reserved that path, or this output reserved a different one."""


class JournalNotReady(ConfigError):
    """The journal does not exist yet or has not been brought to this version's schema.

    A daemon that has just taken the state folder is in this state for a moment; readers that
    know one is starting wait for it, others report it.
    """


class Journal:
    """One connection to the journal file; safe to share between threads of one process."""

    def __init__(
        self, conn: sqlite3.Connection, db_path: Path, owner: str, clock: Clock, *, read_only: bool
    ) -> None:
        """Use ``Journal.open`` or ``Journal.open_read_only`` instead."""
        self._conn = conn
        self._lock = threading.RLock()
        self.db_path = db_path
        self.owner = owner
        self._clock = clock
        self.read_only = read_only
        self.space_wait: SpaceWait | None = None
        """Set (by the daemon) to make writes wait for room on a full disk (``space.py``)."""
        self.full_disk_log = FullDiskLog("the journal")

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, db_path: Path, owner: str, clock: Clock = time.time) -> Journal:
        """Open (creating and migrating if needed) the journal for a worker named ``owner``."""
        if not owner:
            raise ValueError("owner must be a non-empty name such as 'host:cuda:0'")
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cannot_open(db_path, exc) from exc
        conn = _connect(db_path, read_only=False)
        try:
            migrate(conn, db_path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _cannot_open(db_path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, db_path, owner, clock, read_only=False)

    @classmethod
    def open_read_only(cls, db_path: Path, clock: Clock = time.time) -> Journal:
        """Open an existing journal for reading (``fooocusd status``), even while a daemon writes."""
        if not db_path.is_file():
            raise JournalNotReady(
                f"there is no journal at {db_path}",
                hint="start the daemon once, or point paths.state at the folder it uses",
                where=str(db_path),
            )
        conn = _connect(db_path, read_only=True)
        try:
            version = schema_version(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not (no_room_to_open(db_path) and _wal_is_empty(db_path)):
                raise _cannot_open(db_path, exc) from exc
            # A disk too full for SQLite's shared-memory file (no daemon has the journal open, so
            # it must be created): read the file as it stands, which is all of it.
            conn = _connect(db_path, read_only=True, immutable=True)
            version = schema_version(conn)
        try:
            check_not_newer(version, db_path)
        except ConfigError:
            conn.close()
            raise
        if version < SCHEMA_VERSION:
            conn.close()
            raise JournalNotReady(
                f"the journal {db_path} has schema version {version}; this fooocusd needs {SCHEMA_VERSION}",
                hint="start the daemon, or restart it after upgrading fooocusd: "
                "it upgrades the journal as it starts",
                where=str(db_path),
            )
        return cls(conn, db_path, "", clock, read_only=True)

    def pragmas(self) -> dict[str, Any]:
        """The connection settings in effect (for diagnostics such as ``fooocusd doctor``)."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout", "user_version")
        with self._lock:
            return {name: self._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ claiming inputs

    @waits_for_space
    def begin_claim(
        self,
        key: str,
        relpath: str,
        sha256: str,
        size: int,
        files: Sequence[tuple[FileRole, Path, Path]],
        specs: Sequence[tuple[str, int]],
        *,
        error: str | None = None,
    ) -> int:
        """Record an input before its files are moved; returns the input id.

        ``files`` is ``(role, source_path, claimed_path)`` per file; ``specs`` is
        ``(spec_json, priority)`` per job in file order. Nothing runs until ``complete_claim``.
        An input with no jobs is allowed: with ``error`` it will finish as failed (e.g. a file
        that could not be parsed), without it as done (e.g. a skipped duplicate).
        """
        if not files:
            raise ValueError("an input needs at least one file")
        roles = [role for role, _, _ in files if role in ("spec", "image", "mask")]
        if len(set(roles)) != len(roles):
            raise ValueError(f"the roles spec, image and mask may appear once per input, got {roles}")
        claimed_paths = [str(claimed) for _, _, claimed in files]
        if len(set(claimed_paths)) != len(claimed_paths):
            raise ValueError(f"each file needs its own claimed path, got {claimed_paths}")
        for spec_json, _ in specs:
            json.loads(spec_json)  # refuse garbage now rather than when a worker picks it up
        now = self._clock()
        with self._write() as conn:
            try:
                input_id: int = conn.execute(
                    "INSERT INTO inputs (key, relpath, sha256, size, state, created, updated, error)"
                    " VALUES (?, ?, ?, ?, 'claiming', ?, ?, ?) RETURNING id",
                    (key, relpath, sha256, size, now, now, error),
                ).fetchone()[0]
            except sqlite3.IntegrityError as exc:
                raise JournalError(
                    f"claim key {key!r} is already in the journal",
                    hint="use a fresh unique key (e.g. uuid4().hex) for every claim",
                ) from exc
            conn.executemany(
                "INSERT INTO input_files (input_id, role, source_path, claimed_path) VALUES (?, ?, ?, ?)",
                [(input_id, role, str(source), str(claimed)) for role, source, claimed in files],
            )
            conn.executemany(
                "INSERT INTO jobs (input_id, seq, spec_json, priority, state, created, updated)"
                " VALUES (?, ?, ?, ?, 'claiming', ?, ?)",
                [(input_id, seq, spec, priority, now, now) for seq, (spec, priority) in enumerate(specs)],
            )
            _event(conn, now, "claiming", f"{relpath}: {len(files)} file(s), {len(specs)} job(s)", input_id)
            if error:
                _event(conn, now, "input_error", error, input_id)
        return input_id

    @waits_for_space
    def complete_claim(self, input_id: int) -> None:
        """The files are in processing/: the input becomes 'claimed' and its jobs 'queued'.

        Calling it again for a claimed input does nothing (reconciliation may repeat it).
        """
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            if current.state == InputState.CLAIMED:
                return
            _require_input_state(current, InputState.CLAIMING, "complete its claim")
            _set_input_state(conn, input_id, InputState.CLAIMED, now)
            conn.execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, updated = ?"
                " WHERE input_id = ? AND state = 'claiming'",
                (now, now, input_id),
            )
            _event(conn, now, "claimed", "files moved into processing", input_id)

    @waits_for_space
    def abandon_claim(self, input_id: int, reason: str) -> None:
        """The source vanished before it was moved: drop its jobs; the input row stays for the record."""
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            _require_input_state(current, InputState.CLAIMING, "abandon its claim")
            conn.execute("DELETE FROM jobs WHERE input_id = ?", (input_id,))
            conn.execute(
                "UPDATE inputs SET state = 'abandoned', error = ?, updated = ? WHERE id = ?",
                (reason, now, input_id),
            )
            _event(conn, now, "abandoned", reason, input_id)

    def claims_in_progress(self) -> list[InputRow]:
        """Inputs left in 'claiming' (a crash between begin_claim and complete_claim)."""
        return self._inputs_in_state(InputState.CLAIMING)

    def find_inputs_by_sha256(self, sha256: str) -> list[InputRow]:
        """Earlier inputs with the same content (abandoned claims excluded), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM inputs WHERE sha256 = ? AND state != 'abandoned' ORDER BY id", (sha256,)
            ).fetchall()
            return [_input_with_files(self._conn, row) for row in rows]

    @waits_for_space
    def set_input_error(self, input_id: int, error: str) -> None:
        """Record a problem with the input itself; it will finish as failed."""
        now = self._clock()
        with self._write() as conn:
            _require_input(conn, input_id)
            conn.execute("UPDATE inputs SET error = ?, updated = ? WHERE id = ?", (error, now, input_id))
            _event(conn, now, "input_error", error, input_id)

    # ------------------------------------------------------------------ running jobs

    @waits_for_space
    def claim_next_job(self, lease_seconds: float) -> JobRow | None:
        """Take the most urgent runnable job for this owner, or None if there is none.

        Order: highest priority, then oldest. Only 'queued' jobs whose ``not_before`` has passed.
        The job becomes 'running' with a lease of ``lease_seconds``; its attempt count goes up.
        """
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, started = ?,"
                " updated = ?, finished = NULL, attempts = attempts + 1,"
                " progress_step = 0, progress_total = 0"
                f" WHERE id = (SELECT id FROM jobs WHERE {_RUNNABLE_NOW_SQL} LIMIT 1)"
                " RETURNING *",
                (self.owner, now + lease_seconds, now, now, now),
            ).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            _event(conn, now, "started", f"attempt {job.attempts} on {self.owner}", job.input_id, job.id)
            return job

    def next_runnable_jobs(self, limit: int) -> list[JobRow]:
        """The jobs ``claim_next_job`` would hand out next, in that order, without claiming them
        (the worker prepares their prompt expansions ahead; another process may still take them)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM jobs WHERE {_RUNNABLE_NOW_SQL} LIMIT ?", (self._clock(), limit)
            ).fetchall()
            return [job_from_row(row) for row in rows]

    @waits_for_space
    def heartbeat(self, job_id: int, step: int, total: int, lease_seconds: float) -> bool:
        """Report progress and extend the lease. False means "stop": the job was cancelled, or
        its lease expired and it was taken back, so this worker no longer owns it.

        Each call is a durable commit (an fsync); once a second is plenty for progress.
        """
        now = self._clock()
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE jobs SET progress_step = ?, progress_total = ?, lease_expires = ?, updated = ?"
                " WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (step, total, now + lease_seconds, now, job_id, self.owner),
            ).rowcount
            if changed:
                return True
            self._let_go_of_cancelled(conn, job_id)
            return False

    @waits_for_space
    def finish_job(self, job_id: int, state: JobState | str, error: str | None = None) -> bool:
        """Mark a job this owner runs as 'done' or 'failed' (a failure needs its ``error``).

        Returns False, leaving the job's state alone, if this owner no longer runs it (cancelled,
        or taken back after its lease expired): a cancel wins over a late finish.
        """
        final = JobState(state)
        if final not in (JobState.DONE, JobState.FAILED):
            raise ValueError(f"finish_job takes 'done' or 'failed', not {final.value!r}")
        if final == JobState.FAILED and not error:
            raise ValueError("a failed job needs an error message that tells the user why")
        now = self._clock()
        with self._write() as conn:
            job = self._owned_running_job(conn, job_id)
            if job is None:
                return False
            _finish(conn, job, final, error, now)
            return True

    @waits_for_space
    def retry_later(self, job_id: int, delay_seconds: float, error: str) -> bool:
        """Put a job this owner runs back in the queue, runnable after ``delay_seconds``."""
        now = self._clock()
        with self._write() as conn:
            job = self._owned_running_job(conn, job_id)
            if job is None:
                return False
            _requeue(conn, job, now + delay_seconds, error, now)
            return True

    @waits_for_space
    def fail_or_retry(
        self,
        job_id: int,
        error: str,
        *,
        max_attempts: int,
        first_delay_seconds: float,
        max_delay_seconds: float = DEFAULT_MAX_RETRY_DELAY_SECONDS,
    ) -> JobState | None:
        """Handle a transient error: retry with doubling backoff, or fail once attempts run out.

        The n-th retry waits ``first_delay_seconds * 2**(n-1)`` (capped). Returns the job's new
        state, or None if this owner no longer runs it.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        now = self._clock()
        with self._write() as conn:
            job = self._owned_running_job(conn, job_id)
            if job is None:
                return None
            if job.attempts >= max_attempts:
                _finish(conn, job, JobState.FAILED, f"gave up after {job.attempts} attempts: {error}", now)
                return JobState.FAILED
            delay = min(max_delay_seconds, first_delay_seconds * 2 ** (job.attempts - 1))
            _requeue(conn, job, now + delay, error, now)
            return JobState.QUEUED

    @waits_for_space
    def release_interrupted(self, job_id: int, detail: str = "shutdown interrupted it; requeued") -> bool:
        """Shutdown (or a pause) stopped the job: requeue it at once without counting the attempt."""
        now = self._clock()
        with self._write() as conn:
            job = self._owned_running_job(conn, job_id)
            if job is None:
                return False
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), not_before = ?,"
                " lease_owner = NULL, lease_expires = NULL, progress_step = 0, progress_total = 0,"
                " updated = ? WHERE id = ?",
                (now, now, job_id),
            )
            _event(conn, now, "interrupted", detail, job.input_id, job_id)
            return True

    @waits_for_space
    def recover_stale_jobs(
        self, *, max_crashes: int = DEFAULT_MAX_CRASHES, at_startup: bool = False
    ) -> list[JobRow]:
        """Take back running jobs whose worker died; returns them as they are now.

        A running job is stale when another owner holds it and its lease expired, or
        (``at_startup``) when it is held by this very owner, which can only mean our previous
        process crashed. A job this owner holds while it runs is never stale: its lease can only
        have run out because the machine was suspended, the process stopped, or the clock jumped,
        and its worker carries on (a hung worker is systemd's watchdog's to restart). Each stale
        job counts a crash; below ``max_crashes`` it is queued again, at ``max_crashes`` it is
        failed as a poison input so that one bad file cannot crash the daemon in a loop.
        """
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        now = self._clock()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state = 'running' AND CASE WHEN lease_owner = ? THEN ?"
                " ELSE lease_expires <= ? END ORDER BY id",
                (self.owner, at_startup, now),
            ).fetchall()
            recovered: list[JobRow] = []
            for job in map(job_from_row, rows):
                crashes = job.crashes + 1
                conn.execute("UPDATE jobs SET crashes = ? WHERE id = ?", (crashes, job.id))
                if crashes >= max_crashes:
                    error = f"crashed the daemon {crashes} times; quarantined as a poison input"
                    _finish(conn, job, JobState.FAILED, error, now, event_kind="quarantined")
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', not_before = ?, lease_owner = NULL,"
                        " lease_expires = NULL, progress_step = 0, progress_total = 0, updated = ?"
                        " WHERE id = ?",
                        (now, now, job.id),
                    )
                    detail = f"worker {job.lease_owner} stopped answering; requeued (crash {crashes})"
                    _event(conn, now, "requeued_after_crash", detail, job.input_id, job.id)
                recovered.append(_require_job(conn, job.id))
            return recovered

    # ------------------------------------------------------------------ user actions

    @waits_for_space
    def cancel_job(self, job_id: int) -> bool:
        """Cancel a job that has not finished; a running worker learns it at its next heartbeat.

        Returns False if the job does not exist or is already done, failed or cancelled.
        """
        return bool(self.cancel_jobs([job_id]))

    def cancel_jobs(self, job_ids: list[int]) -> list[int]:
        """``cancel_job`` for each of ``job_ids``, in one transaction; the ids it cancelled."""
        now = self._clock()
        cancelled: list[int] = []
        with self._write() as conn:
            for job_id in job_ids:
                job = _load_job(conn, job_id)
                if job is None or job.is_terminal:
                    continue
                # A running job keeps its lease until the worker acknowledges, so that its input is
                # not moved away while the worker may still be reading it.
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, updated = ? WHERE id = ?",
                    (now, now, job_id),
                )
                detail = f"cancelled while {job.state.value}"
                if job.state == JobState.RUNNING:
                    detail += f" on {job.lease_owner}; it stops at its next progress report"
                _event(conn, now, "cancelled", detail, job.input_id, job_id)
                cancelled.append(job_id)
        return cancelled

    @waits_for_space
    def retry_job(self, job_id: int) -> RetryPlan:
        """Run a failed or cancelled job again from scratch (attempts and crashes reset).

        If its input was already moved to done/ or failed/, the job waits ('claiming') and the
        input becomes 'reopening'; see ``RetryPlan``. Raises ``JournalError`` saying why when the
        job cannot be retried.
        """
        now = self._clock()
        with self._write() as conn:
            job = _load_job(conn, job_id)
            if job is None:
                raise JournalError(f"there is no job {job_id}", hint="`fooocusd status` lists the jobs")
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                raise JournalError(
                    f"job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried",
                    hint="cancel it first if you want to start it over" if not job.is_terminal else "",
                )
            if job.lease_owner is not None and (job.lease_expires or 0.0) > now:
                raise JournalError(
                    f"job {job_id} is still stopping on {job.lease_owner}",
                    hint="try again after its worker has noticed the cancel (seconds, usually)",
                )
            source = _require_input(conn, job.input_id)
            if source.state == InputState.FINISHING:
                raise JournalError(
                    f"the files of job {job_id} are being moved to {source.final_dir} right now",
                    hint="try again in a few seconds",
                )
            if source.state == InputState.FINISHED and any(f.final_path is None for f in source.files):
                raise JournalError(
                    f"the input {source.relpath} was deleted after it finished"
                    " (outbox.after_success = delete)",
                    hint="drop the file into the inbox again",
                )
            restore_files = source.state in (InputState.FINISHED, InputState.REOPENING)
            # The job may only run once its input's files are in processing/ again (or at all).
            held = restore_files or source.state == InputState.CLAIMING
            new_state = JobState.CLAIMING if held else JobState.QUEUED
            conn.execute(
                "UPDATE jobs SET state = ?, attempts = 0, crashes = 0, not_before = ?, lease_owner = NULL,"
                " lease_expires = NULL, progress_step = 0, progress_total = 0, error = NULL,"
                " started = NULL, finished = NULL, updated = ? WHERE id = ?",
                (new_state.value, now, now, job_id),
            )
            if source.state == InputState.FINISHED:
                _set_input_state(conn, source.id, InputState.REOPENING, now)
            detail = f"retried by user (was {job.state.value})"
            if restore_files:
                detail += "; input files are moved back into processing first"
            _event(conn, now, "retried", detail, source.id, job_id)
            return RetryPlan(
                job=_require_job(conn, job_id),
                input=_require_input(conn, source.id),
                restore_files=restore_files,
            )

    @waits_for_space
    def complete_reopen(self, input_id: int) -> None:
        """The files of a reopened input are back in processing/: run its held jobs."""
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            if current.state == InputState.CLAIMED:
                return
            _require_input_state(current, InputState.REOPENING, "complete its reopening")
            conn.execute("UPDATE inputs SET final_dir = NULL WHERE id = ?", (input_id,))
            conn.execute("UPDATE input_files SET final_path = NULL WHERE input_id = ?", (input_id,))
            _set_input_state(conn, input_id, InputState.CLAIMED, now)
            conn.execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, updated = ?"
                " WHERE input_id = ? AND state = 'claiming'",
                (now, now, input_id),
            )
            _event(conn, now, "reopened", "files moved back into processing", input_id)

    def inputs_reopening(self) -> list[InputRow]:
        """Inputs whose files were being moved back for a retry (for start-up reconciliation)."""
        return self._inputs_in_state(InputState.REOPENING)

    # ------------------------------------------------------------------ finishing inputs

    def inputs_ready_to_finish(self) -> list[InputRow]:
        """Claimed inputs whose jobs are all done, failed or cancelled (see ``input_outcome``).

        A job cancelled while running counts only once its worker has let go (or its lease ran
        out), so files are never moved from under a worker that may still read them.
        """
        now = self._clock()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM inputs i WHERE state = 'claimed'"
                f" AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.input_id = i.id AND {_UNSETTLED_JOB_SQL})"
                " ORDER BY id",
                (now,),
            ).fetchall()
            return [_input_with_files(conn, row) for row in rows]

    def input_outcome(self, input_id: int) -> Outcome:
        """'failed' if the input has an error of its own or any of its jobs failed, else 'done'."""
        with self._read() as conn:
            source = _require_input(conn, input_id)
            failed = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE input_id = ? AND state = 'failed'", (input_id,)
            ).fetchone()[0]
            return "failed" if source.error is not None or failed else "done"

    @waits_for_space
    def begin_finish(
        self,
        input_id: int,
        final_dir: Path | str | None,
        final_paths: Mapping[Path, Path | None] | Mapping[str, str | None],
    ) -> None:
        """Record where each claimed file goes, before the daemon moves anything.

        ``final_paths`` maps every file's ``claimed_path`` to its target, or to None when the
        file is to be deleted. Repeating the call with the same targets is harmless.
        """
        final_dir = None if final_dir is None else Path(final_dir)
        targets = {
            Path(source): None if target is None else Path(target) for source, target in final_paths.items()
        }
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            claimed = {f.claimed_path for f in current.files}
            if set(targets) != claimed:
                raise ValueError(
                    f"final_paths must name exactly the claimed files {sorted(map(str, claimed))},"
                    f" got {sorted(map(str, targets))}"
                )
            if current.state == InputState.FINISHING:
                recorded = {f.claimed_path: f.final_path for f in current.files}
                if recorded == targets and current.final_dir == final_dir:
                    return
                raise JournalError(
                    f"input {current.relpath} is already being moved to {current.final_dir}",
                    hint="finish the recorded moves (inputs_finishing) instead of choosing new targets",
                )
            _require_input_state(current, InputState.CLAIMED, "start finishing")
            unsettled = conn.execute(
                f"SELECT COUNT(*) FROM jobs j WHERE j.input_id = ? AND {_UNSETTLED_JOB_SQL}", (input_id, now)
            ).fetchone()[0]
            if unsettled:
                raise JournalError(
                    f"input {current.relpath} still has {unsettled} unfinished job(s)",
                    hint="wait until inputs_ready_to_finish lists it",
                )
            conn.executemany(
                "UPDATE input_files SET final_path = ? WHERE input_id = ? AND claimed_path = ?",
                [
                    (None if target is None else str(target), input_id, str(source))
                    for source, target in targets.items()
                ],
            )
            conn.execute(
                "UPDATE inputs SET final_dir = ? WHERE id = ?",
                (None if final_dir is None else str(final_dir), input_id),
            )
            _set_input_state(conn, input_id, InputState.FINISHING, now)
            _event(conn, now, "finishing", f"moving to {final_dir}" if final_dir else "deleting", input_id)

    @waits_for_space
    def complete_finish(self, input_id: int) -> None:
        """All recorded moves are done: the input is 'finished'. Repeating it does nothing."""
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            if current.state == InputState.FINISHED:
                return
            _require_input_state(current, InputState.FINISHING, "complete finishing")
            _set_input_state(conn, input_id, InputState.FINISHED, now)
            _event(
                conn, now, "finished", f"in {current.final_dir}" if current.final_dir else "deleted", input_id
            )

    @waits_for_space
    def retarget_final_path(self, input_id: int, claimed_path: Path | str, final_path: Path | str) -> None:
        """While finishing, before the move: another process took the recorded target name
        (daemons sharing done/ and failed/), so the file goes to ``final_path`` instead."""
        now = self._clock()
        with self._write() as conn:
            current = _require_input(conn, input_id)
            _require_input_state(current, InputState.FINISHING, "change where a file goes")
            updated = conn.execute(
                "UPDATE input_files SET final_path = ? WHERE input_id = ? AND claimed_path = ?",
                (str(final_path), input_id, str(claimed_path)),
            ).rowcount
            if updated != 1:
                raise ValueError(f"{claimed_path} is not a claimed file of input {input_id}")
            _event(conn, now, "retargeted", f"name taken meanwhile; moving to {final_path}", input_id)

    def inputs_finishing(self) -> list[InputRow]:
        """Inputs whose final moves were recorded but not confirmed (for start-up reconciliation)."""
        return self._inputs_in_state(InputState.FINISHING)

    # ------------------------------------------------------------------ outputs

    @waits_for_space
    def plan_output(self, job_id: int, index: int, path: Path, *, replace: bool = False) -> OutputRow:
        """Reserve ``path`` for image ``index`` of a job before writing it.

        Repeating the call with the same path returns the existing row (a re-run after a crash
        can skip images whose row is already 'complete'). Raises ``OutputNameTaken`` if the path
        belongs to another image, or this image already reserved another path, unless ``replace``
        is set and that reservation is still only 'planned' (its name was taken on disk meanwhile).
        """
        if not path.is_absolute():
            raise ValueError(f"output paths must be absolute, got {path}")
        now = self._clock()
        with self._write() as conn:
            job = _load_job(conn, job_id)
            if job is None:
                raise JournalError(f"there is no job {job_id}")
            mine = conn.execute(
                "SELECT * FROM outputs WHERE job_id = ? AND image_index = ?", (job_id, index)
            ).fetchone()
            if mine is not None:
                existing = output_from_row(mine)
                if existing.path == path:
                    return existing
                if replace and existing.state == "planned":
                    conn.execute("DELETE FROM outputs WHERE job_id = ? AND image_index = ?", (job_id, index))
                else:
                    raise OutputNameTaken(
                        f"image {index} of job {job_id} already reserved {existing.path}, not {path}",
                        hint="reuse the reserved name so that a re-run replaces its own files",
                    )
            holder = conn.execute(
                "SELECT job_id, image_index FROM outputs WHERE path = ?", (str(path),)
            ).fetchone()
            if holder is not None:
                raise OutputNameTaken(
                    f"{path} is already reserved by image {holder['image_index']} of job {holder['job_id']}",
                    hint="pick another name (is_path_reserved tells which names are free)",
                )
            row = conn.execute(
                "INSERT INTO outputs (job_id, image_index, path, state, created)"
                " VALUES (?, ?, ?, 'planned', ?) RETURNING *",
                (job_id, index, str(path), now),
            ).fetchone()
            return output_from_row(row)

    @waits_for_space
    def complete_output(self, job_id: int, index: int, sha256: str) -> None:
        """The image file is published (fsynced and renamed into place)."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE outputs SET state = 'complete', sha256 = ?, completed = ?"
                " WHERE job_id = ? AND image_index = ? RETURNING path",
                (sha256, now, job_id, index),
            ).fetchone()
            if row is None:
                raise JournalError(
                    f"image {index} of job {job_id} was never planned", hint="call plan_output first"
                )
            job = _require_job(conn, job_id)
            _event(conn, now, "output", f"wrote {row['path']}", job.input_id, job_id)

    def outputs_for(self, job_id: int) -> list[OutputRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM outputs WHERE job_id = ? ORDER BY image_index", (job_id,)
            ).fetchall()
            return [output_from_row(row) for row in rows]

    def planned_outputs(self) -> list[OutputRow]:
        """Outputs reserved but never confirmed, across all jobs (for start-up reconciliation)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM outputs WHERE state = 'planned' ORDER BY id").fetchall()
            return [output_from_row(row) for row in rows]

    def is_path_reserved(self, path: Path) -> bool:
        """True if any job planned or wrote an output at ``path``."""
        with self._lock:
            return (
                self._conn.execute("SELECT 1 FROM outputs WHERE path = ?", (str(path),)).fetchone()
                is not None
            )

    # ------------------------------------------------------------------ audit trail

    def forget_before(self, cutoff: float, *, batch: int = 500) -> int:
        """Delete up to ``batch`` records of each kind older than ``cutoff`` (a clock time), in one
        short transaction; the number deleted (0: nothing older is left).

        Forgotten: inputs that finished or were abandoned before ``cutoff``, with their jobs,
        outputs and file rows; events before it that belong to no remaining input; refusals made
        before it. An input that is still waiting, running or being moved is never touched. The
        newest input stays, so that SQLite never hands out a job id it gave before.
        """
        with self._write() as conn:
            inputs = conn.execute(
                "DELETE FROM inputs WHERE id IN (SELECT id FROM inputs"
                " WHERE state IN ('finished', 'abandoned') AND updated < ?"
                " AND id < (SELECT MAX(id) FROM inputs) LIMIT ?)",
                (cutoff, batch),
            ).rowcount
            # Events are written in time order: those before the first one at or after the cutoff.
            boundary = conn.execute(
                "SELECT id FROM events WHERE ts >= ? ORDER BY id LIMIT 1", (cutoff,)
            ).fetchone()
            events = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < ? AND input_id IS NULL"
                " ORDER BY id LIMIT ?)",
                (boundary[0] if boundary else 2**63 - 1, batch),
            ).rowcount
            refusals = conn.execute(
                "DELETE FROM refusals WHERE id IN (SELECT id FROM refusals WHERE ts < ? LIMIT ?)",
                (cutoff, batch),
            ).rowcount
        return inputs + events + refusals

    @waits_for_space
    def log_event(
        self, kind: str, detail: str = "", *, input_id: int | None = None, job_id: int | None = None
    ) -> None:
        """Add a line to the audit trail; a job's event is also filed under its input."""
        now = self._clock()
        with self._write() as conn:
            if job_id is not None and input_id is None:
                input_id = _require_job(conn, job_id).input_id
            _event(conn, now, kind, detail, input_id, job_id)

    @waits_for_space
    def record_refusal(self, relpath: str, detail: str, files: Sequence[tuple[str, Path]]) -> None:
        """A drop refused at intake: its 'refused' event, and where each of its files (by its
        path in the inbox) went in failed/, so that ``return_refusal`` can bring them back."""
        now = self._clock()
        where = json.dumps([[inbox_relpath, str(failed)] for inbox_relpath, failed in files])
        with self._write() as conn:
            _event(conn, now, "refused", detail, None)
            conn.execute("INSERT INTO refusals (ts, relpath, files) VALUES (?, ?, ?)", (now, relpath, where))

    def find_refusal(self, ref: str) -> RefusalRow | None:
        """The newest refused drop, not yet returned, that ``ref`` names: its path in the inbox
        (or the start of it), or the name or path one of its files has in failed/.

        Raises ``JournalError`` when ``ref`` is only the start of several different paths.
        """
        ref = ref.strip()
        if not ref:
            return None
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM refusals WHERE returned IS NULL ORDER BY id DESC"
            ).fetchall()
        refusals = [refusal_from_row(row) for row in rows]
        for refusal in refusals:
            failed_names = {name for _, failed in refusal.files for name in (failed.name, str(failed))}
            if ref == refusal.relpath or ref in failed_names:
                return refusal
        starting = [refusal for refusal in refusals if refusal.relpath.startswith(ref)]
        paths = list(dict.fromkeys(refusal.relpath for refusal in starting))
        if len(paths) > 1:
            raise JournalError(
                f"'{ref}' is the start of {len(paths)} refused files: {', '.join(paths[:10])}",
                hint="give the whole path",
            )
        return starting[0] if starting else None

    @waits_for_space
    def mark_refusal_returned(self, refusal_id: int) -> None:
        """``fooocusd retry`` put the refused drop's files back in the inbox."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute("SELECT relpath FROM refusals WHERE id = ?", (refusal_id,)).fetchone()
            if row is None:
                raise JournalError(f"no refusal {refusal_id}")
            conn.execute("UPDATE refusals SET returned = ? WHERE id = ?", (now, refusal_id))
            _event(conn, now, "refusal-returned", row["relpath"], None)

    def images_left(self, images_of_preset: Callable[[str | None], int] | int = 1) -> int:
        """Images the queued and running jobs still have to make. A job that does not say how many
        makes ``images_of_preset(its preset)`` (None: it names none), or that number if one is given."""
        with self._read() as conn:
            given = conn.execute(
                "SELECT COALESCE(SUM(json_extract(spec_json, '$.images')), 0) FROM jobs"
                " WHERE state IN ('queued', 'running')"
            ).fetchone()[0]
            unsaid = conn.execute(
                "SELECT json_extract(spec_json, '$.preset'), COUNT(*) FROM jobs"
                " WHERE state IN ('queued', 'running') AND json_extract(spec_json, '$.images') IS NULL"
                " GROUP BY 1"
            ).fetchall()
            made = conn.execute(
                "SELECT COUNT(*) FROM outputs o JOIN jobs j ON j.id = o.job_id"
                " WHERE j.state IN ('queued', 'running') AND o.state = 'complete'"
            ).fetchone()[0]
        per_preset = images_of_preset if callable(images_of_preset) else lambda _preset: images_of_preset
        wanted = int(given) + sum(per_preset(preset) * count for preset, count in unsaid)
        return max(0, wanted - int(made))

    def recent_output_times(self, limit: int) -> list[float]:
        """When the last ``limit`` images were completed, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT completed FROM outputs WHERE state = 'complete' AND completed IS NOT NULL"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return sorted(float(row[0]) for row in rows)

    def oldest_input_time(self) -> float | None:
        """When the oldest input the journal still holds was dropped; None when it holds none."""
        with self._lock:
            return self._conn.execute("SELECT MIN(created) FROM inputs").fetchone()[0]

    def events_for_input(self, input_id: int) -> list[EventRow]:
        """Everything that happened to an input and its jobs, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM events WHERE input_id = ? ORDER BY id", (input_id,)
            ).fetchall()
            return [event_from_row(row) for row in rows]

    def recent_events(self, kind: str, limit: int = 10) -> list[EventRow]:
        """The newest events of one kind (e.g. 'refused' files that never became jobs), newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM events WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, limit)
            ).fetchall()
            return [event_from_row(row) for row in rows]

    def events_since(self, kind: str, since: float) -> list[EventRow]:
        """The events of one kind at ``since`` or later, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM events WHERE kind = ? AND ts >= ? ORDER BY id", (kind, since)
            ).fetchall()
            return [event_from_row(row) for row in rows]

    # ------------------------------------------------------------------ looking things up

    def get_job(self, job_id: int) -> JobRow | None:
        with self._lock:
            return _load_job(self._conn, job_id)

    def get_input(self, input_id: int) -> InputRow | None:
        with self._lock:
            return _load_input(self._conn, input_id)

    def jobs_for_input(self, input_id: int) -> list[JobRow]:
        with self._lock:
            return _jobs_for_input(self._conn, input_id)

    def files_for_input(self, input_id: int) -> list[InputFileRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM input_files WHERE input_id = ? ORDER BY id", (input_id,)
            ).fetchall()
            return [input_file_from_row(row) for row in rows]

    def inputs_dropped_as(self, relpath: str, since: float) -> list[InputRow]:
        """The inputs dropped as ``relpath`` and taken in at ``since`` or later (claims abandoned
        because the file vanished excluded), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM inputs WHERE relpath = ? AND created >= ? AND state != 'abandoned' "
                "ORDER BY id",
                (relpath, since),
            ).fetchall()
            return [_input_with_files(self._conn, row) for row in rows]

    def refusals_of(self, relpath: str, since: float) -> list[RefusalRow]:
        """The drops of ``relpath`` refused at intake at ``since`` or later, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM refusals WHERE relpath = ? AND ts >= ? ORDER BY id", (relpath, since)
            ).fetchall()
        return [refusal_from_row(row) for row in rows]

    def find_job(self, ref: str) -> JobRow | None:
        """The one job a user means by ``ref`` (see ``find_jobs``), or None if nothing matches.

        Raises ``JournalError`` listing the candidates when ``ref`` matches several jobs.
        """
        matches = self.find_jobs(ref)
        if len(matches) <= 1:
            return matches[0] if matches else None
        with self._lock:
            relpaths = {job.input_id: self._input_relpath(job.input_id) for job in matches}
        shown = ", ".join(f"{job.id} ({relpaths[job.input_id]} #{job.seq + 1})" for job in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise JournalError(
            f"'{ref}' matches {len(matches)} jobs: {shown}{more}",
            hint="give the job id instead (`fooocusd status` lists them)",
        )

    def jobs_of_file(self, ref: str) -> list[JobRow]:
        """Every job of the inputs whose inbox path ``ref`` names whole (``many.toml`` or ``many``),
        newest input first; empty when it names none whole."""
        matches = self.find_jobs(ref)
        with self._lock:
            relpaths = {
                input_id: self._input_relpath(input_id) for input_id in {job.input_id for job in matches}
            }
        return [job for job in matches if _names_whole(ref.strip(), relpaths[job.input_id])]

    def find_jobs(self, ref: str) -> list[JobRow]:
        """Jobs a user may mean by ``ref``: a job id, or else the start of an input's path in the inbox.

        Matches by path are newest input first; abandoned claims are left out. A path that ``ref``
        names whole (``j2`` or ``j2.txt``) wins over those it only begins (``j20.txt``...).
        """
        ref = ref.strip()
        if not ref:
            return []
        with self._lock:
            if ref.isdecimal():
                job = _load_job(self._conn, int(ref))
                if job is not None:
                    return [job]
            # substr() instead of LIKE: paths may contain % or _ and must match case-sensitively.
            rows = self._conn.execute(
                "SELECT j.*, i.relpath FROM jobs j JOIN inputs i ON i.id = j.input_id"
                " WHERE substr(i.relpath, 1, length(?)) = ? AND i.state != 'abandoned'"
                " ORDER BY i.id DESC, j.seq",
                (ref, ref),
            ).fetchall()
        whole = [row for row in rows if _names_whole(ref, row["relpath"])]
        return [job_from_row(row) for row in whole or rows]

    def failed_jobs(self) -> list[JobRow]:
        """Failed jobs whose file was not dropped again since, oldest input first.

        A later input under the same name (the fixed file dropped again, or an edited one that
        `fooocusd retry` returned to the inbox) supersedes the failures of the earlier one.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT j.* FROM jobs j JOIN inputs i ON i.id = j.input_id"
                f" WHERE j.state = 'failed' AND i.state != 'abandoned' AND NOT {_DROPPED_AGAIN}"
                " ORDER BY i.id, j.seq"
            ).fetchall()
            return [job_from_row(row) for row in rows]

    def status(self, recent_failures: int = 10) -> dict[str, Any]:
        """A JSON-ready snapshot for ``fooocusd status``: counts, running jobs, recent failures."""
        now = self._clock()
        with self._read() as conn:
            counts = {state.value: 0 for state in JobState}
            for row in conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
                counts[row["state"]] = row["n"]
            input_counts = {state.value: 0 for state in InputState}
            for row in conn.execute("SELECT state, COUNT(*) AS n FROM inputs GROUP BY state"):
                input_counts[row["state"]] = row["n"]
            waiting = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND not_before > ?", (now,)
            ).fetchone()[0]
            refused = {"in_failed": 0, "returned": 0}
            for row in conn.execute(
                "SELECT returned IS NULL AS kept, COUNT(*) AS n FROM refusals GROUP BY 1"
            ):
                refused["in_failed" if row["kept"] else "returned"] = row["n"]
            running = [
                {
                    "id": row["id"],
                    "relpath": row["relpath"],
                    "seq": row["seq"],
                    "owner": row["lease_owner"],
                    "progress_step": row["progress_step"],
                    "progress_total": row["progress_total"],
                    "attempt": row["attempts"],
                    "started": row["started"],
                    "lease_expires": row["lease_expires"],
                }
                for row in conn.execute(
                    "SELECT j.*, i.relpath FROM jobs j JOIN inputs i ON i.id = j.input_id"
                    " WHERE j.state = 'running' ORDER BY j.started, j.id"
                )
            ]
            failures = [
                {
                    "id": row["id"],
                    "relpath": row["relpath"],
                    "error": row["error"],
                    "finished": row["finished"],
                    "dropped_again": bool(row["dropped_again"]),
                }
                for row in conn.execute(
                    f"SELECT j.*, i.relpath, {_DROPPED_AGAIN} AS dropped_again"
                    " FROM jobs j JOIN inputs i ON i.id = j.input_id"
                    " WHERE j.state = 'failed' ORDER BY j.finished DESC, j.id DESC LIMIT ?",
                    (recent_failures,),
                )
            ]
        return status_report(now, counts, input_counts, waiting, running, failures, refused)

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        if self.read_only:
            raise JournalError(
                f"the journal {self.db_path} was opened read-only", hint="use Journal.open to change it"
            )
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise TransientError(
                    f"the journal {self.db_path} stayed locked for {BUSY_TIMEOUT_SECONDS:g} s: {exc}",
                    hint="another process holds a long write on it; the operation can be retried",
                    where=str(self.db_path),
                ) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if is_disk_full(exc):
                    raise journal_full(self.db_path) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so that several SELECTs see one consistent snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _inputs_in_state(self, state: InputState) -> list[InputRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM inputs WHERE state = ? ORDER BY id", (state.value,)
            ).fetchall()
            return [_input_with_files(self._conn, row) for row in rows]

    def _input_relpath(self, input_id: int) -> str:
        row = self._conn.execute("SELECT relpath FROM inputs WHERE id = ?", (input_id,)).fetchone()
        return "" if row is None else str(row["relpath"])

    def _owned_running_job(self, conn: sqlite3.Connection, job_id: int) -> JobRow | None:
        """The job if this owner runs it; otherwise releases a cancelled one and returns None."""
        job = _load_job(conn, job_id)
        if job is not None and job.state == JobState.RUNNING and job.lease_owner == self.owner:
            return job
        self._let_go_of_cancelled(conn, job_id)
        return None

    def _let_go_of_cancelled(self, conn: sqlite3.Connection, job_id: int) -> None:
        conn.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL"
            " WHERE id = ? AND state = 'cancelled' AND lease_owner = ?",
            (job_id, self.owner),
        )


# ---------------------------------------------------------------------- module helpers


def _connect(db_path: Path, *, read_only: bool, immutable: bool = False) -> sqlite3.Connection:
    uri = db_path.absolute().as_uri() + ("?mode=ro" if read_only else "")
    uri += "&immutable=1" if immutable else ""
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _cannot_open(db_path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000):d}")
        conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        else:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"cannot use write-ahead logging for the journal {db_path} (got mode {mode!r})",
                    hint="put paths.state on a local disk, not a network share",
                    where=str(db_path),
                )
            conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as exc:
        conn.close()
        raise _cannot_open(db_path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


ROOM_TO_OPEN_BYTES = 1024 * 1024
"""SQLite needs a little room beside the journal to open it (its write-ahead log and shared memory)."""


def no_room_to_open(db_path: Path) -> bool:
    """The disk under the journal is too full for SQLite to open it."""
    try:
        return shutil.disk_usage(db_path.parent).free < ROOM_TO_OPEN_BYTES
    except OSError:
        return False


def _wal_is_empty(db_path: Path) -> bool:
    wal = db_path.with_name(db_path.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True


def _cannot_open(db_path: Path, exc: BaseException) -> ConfigError:
    if no_room_to_open(db_path):
        folder = db_path.parent
        return ConfigError(
            f"cannot open the journal {db_path}: the disk that holds it is full ({exc})",
            hint=f"free some space on the disk that holds {folder} (`df -h {folder}` shows it); "
            "the journal itself is fine, and nothing in it is lost",
            where=str(db_path),
        )
    return ConfigError(
        f"cannot open the journal {db_path}: {exc}",
        hint="check that the state folder exists, is writable by this user and lies on a local disk;"
        " if the file is damaged, move it aside (the daemon then starts with an empty journal)",
        where=str(db_path),
    )


def _event(
    conn: sqlite3.Connection,
    ts: float,
    kind: str,
    detail: str,
    input_id: int | None,
    job_id: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO events (ts, input_id, job_id, kind, detail) VALUES (?, ?, ?, ?, ?)",
        (ts, input_id, job_id, kind, detail),
    )


def _set_input_state(conn: sqlite3.Connection, input_id: int, state: InputState, now: float) -> None:
    conn.execute("UPDATE inputs SET state = ?, updated = ? WHERE id = ?", (state.value, now, input_id))


def _finish(
    conn: sqlite3.Connection,
    job: JobRow,
    state: JobState,
    error: str | None,
    now: float,
    *,
    event_kind: str | None = None,
) -> None:
    conn.execute(
        "UPDATE jobs SET state = ?, error = ?, finished = ?, updated = ?, lease_owner = NULL,"
        " lease_expires = NULL WHERE id = ?",
        (state.value, error, now, now, job.id),
    )
    _event(conn, now, event_kind or state.value, error or "", job.input_id, job.id)


def _requeue(conn: sqlite3.Connection, job: JobRow, not_before: float, error: str, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', not_before = ?, error = ?,"
        " lease_owner = NULL, lease_expires = NULL,"
        " progress_step = 0, progress_total = 0, updated = ? WHERE id = ?",
        (not_before, error, now, job.id),
    )
    detail = f"attempt {job.attempts} failed: {error}; retry in {max(0.0, not_before - now):.0f} s"
    _event(conn, now, "retry_scheduled", detail, job.input_id, job.id)


def _load_job(conn: sqlite3.Connection, job_id: int) -> JobRow | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else job_from_row(row)


def _require_job(conn: sqlite3.Connection, job_id: int) -> JobRow:
    job = _load_job(conn, job_id)
    if job is None:
        raise JournalError(f"there is no job {job_id}", hint="`fooocusd status` lists the jobs")
    return job


def _jobs_for_input(conn: sqlite3.Connection, input_id: int) -> list[JobRow]:
    rows = conn.execute("SELECT * FROM jobs WHERE input_id = ? ORDER BY seq", (input_id,)).fetchall()
    return [job_from_row(row) for row in rows]


def _input_with_files(conn: sqlite3.Connection, row: sqlite3.Row) -> InputRow:
    files = conn.execute("SELECT * FROM input_files WHERE input_id = ? ORDER BY id", (row["id"],)).fetchall()
    return input_from_row(row, tuple(input_file_from_row(f) for f in files))


def _load_input(conn: sqlite3.Connection, input_id: int) -> InputRow | None:
    row = conn.execute("SELECT * FROM inputs WHERE id = ?", (input_id,)).fetchone()
    return None if row is None else _input_with_files(conn, row)


def _require_input(conn: sqlite3.Connection, input_id: int) -> InputRow:
    found = _load_input(conn, input_id)
    if found is None:
        raise JournalError(f"there is no input {input_id} in the journal")
    return found


def _require_input_state(current: InputRow, expected: InputState, action: str) -> None:
    if current.state != expected:
        raise JournalError(
            f"cannot {action} for input {current.relpath}: it is {current.state.value}, not {expected.value}"
        )


def _names_whole(ref: str, relpath: str) -> bool:
    """``ref`` is the input's path, with or without its extension."""
    return relpath == ref or PurePosixPath(relpath).with_suffix("").as_posix() == ref


def unfinished_jobs(counts: dict[str, int]) -> int:
    """Jobs of a status report's ``counts`` that a daemon has still to run (or to finish running)."""
    return sum(counts.get(state.value, 0) for state in (JobState.QUEUED, JobState.RUNNING, JobState.CLAIMING))


def status_report(
    now: float,
    counts: dict[str, int] | None = None,
    input_counts: dict[str, int] | None = None,
    waiting_for_retry: int = 0,
    running: list[dict[str, Any]] | None = None,
    failures: list[dict[str, Any]] | None = None,
    refused: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The shape of ``fooocusd status --json``; with no arguments, that of a journal with no jobs.

    ``refused`` counts the files refused at intake: still in failed/, or returned by a retry."""
    counts = counts or {state.value: 0 for state in JobState}
    return {
        "generated_at": now,
        "counts": counts,
        "inputs": input_counts or {state.value: 0 for state in InputState},
        "queued": counts[JobState.QUEUED.value],
        "waiting_for_retry": waiting_for_retry,
        "running": running or [],
        "recent_failures": failures or [],
        "refused_files": refused or {"in_failed": 0, "returned": 0},
    }
