"""Plain, immutable views of journal rows, and the state names they use.

Rows are snapshots: they do not change when the database does. Times are unix seconds (floats).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from fooocusd.jobs.spec import JobSpec


class InputState(StrEnum):
    """Where a dropped input is in its life; the daemon's file moves follow these states."""

    CLAIMING = "claiming"  # recorded; files are being moved from the inbox into processing/
    CLAIMED = "claimed"  # files are in processing/; its jobs are runnable
    FINISHING = "finishing"  # final targets recorded; files are being moved to done/ or failed/
    FINISHED = "finished"  # files are in their final place
    REOPENING = "reopening"  # a job was retried; files are being moved back into processing/
    ABANDONED = "abandoned"  # the source vanished before the claim completed; nothing ran


class JobState(StrEnum):
    CLAIMING = "claiming"  # not runnable yet (its input is being claimed or reopened)
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OutputState(StrEnum):
    PLANNED = "planned"  # name reserved, file not (completely) written yet
    COMPLETE = "complete"  # file published; sha256 recorded


TERMINAL_JOB_STATES: frozenset[JobState] = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
# spec/image/mask: the drop itself (at most one each); named/shared: files its jobs name by path.
FileRole = Literal["spec", "image", "mask", "named", "shared"]
Outcome = Literal["done", "failed"]


@dataclass(frozen=True, slots=True)
class InputFileRow:
    """One physical file of an input: where it came from, where it is now, where it goes."""

    id: int
    input_id: int
    role: FileRole
    source_path: Path
    claimed_path: Path
    final_path: Path | None  # set by begin_finish; None while finishing means "delete it"


@dataclass(frozen=True, slots=True)
class InputRow:
    id: int
    key: str
    relpath: str
    sha256: str
    size: int
    state: InputState
    created: float
    updated: float
    final_dir: Path | None
    error: str | None  # an input-level problem (e.g. the file could not be parsed)
    files: tuple[InputFileRow, ...]


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    input_id: int
    seq: int
    spec_json: str
    priority: int
    state: JobState
    attempts: int
    crashes: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    progress_step: int
    progress_total: int
    error: str | None
    created: float
    updated: float
    started: float | None
    finished: float | None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    def spec(self) -> JobSpec:
        """The stored spec, validated again (it was valid when it was queued)."""
        return JobSpec.model_validate_json(self.spec_json)


@dataclass(frozen=True, slots=True)
class OutputRow:
    id: int
    job_id: int
    image_index: int
    path: Path
    state: OutputState
    sha256: str | None
    created: float
    completed: float | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: float
    input_id: int | None
    job_id: int | None
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class RefusalRow:
    """A drop refused at intake: each file's path in the inbox, and where it went in failed/."""

    id: int
    ts: float
    relpath: str
    files: tuple[tuple[str, Path], ...]
    returned: float | None


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What ``Journal.retry_job`` did, and what the daemon must do next.

    When ``restore_files`` is true the input had already been finished: the job is held (state
    'claiming') and the input is 'reopening'. The daemon moves each file's ``final_path`` back to
    its ``claimed_path`` (deleting a stale ``.error.txt`` if it likes), then calls
    ``Journal.complete_reopen(input.id)``, which makes the job runnable.
    """

    job: JobRow
    input: InputRow
    restore_files: bool


def _optional_path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def input_file_from_row(row: sqlite3.Row) -> InputFileRow:
    return InputFileRow(
        id=row["id"],
        input_id=row["input_id"],
        role=row["role"],
        source_path=Path(row["source_path"]),
        claimed_path=Path(row["claimed_path"]),
        final_path=_optional_path(row["final_path"]),
    )


def input_from_row(row: sqlite3.Row, files: tuple[InputFileRow, ...]) -> InputRow:
    return InputRow(
        id=row["id"],
        key=row["key"],
        relpath=row["relpath"],
        sha256=row["sha256"],
        size=row["size"],
        state=InputState(row["state"]),
        created=row["created"],
        updated=row["updated"],
        final_dir=_optional_path(row["final_dir"]),
        error=row["error"],
        files=files,
    )


def job_from_row(row: sqlite3.Row) -> JobRow:
    return JobRow(
        id=row["id"],
        input_id=row["input_id"],
        seq=row["seq"],
        spec_json=row["spec_json"],
        priority=row["priority"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        crashes=row["crashes"],
        not_before=row["not_before"],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
        error=row["error"],
        created=row["created"],
        updated=row["updated"],
        started=row["started"],
        finished=row["finished"],
    )


def output_from_row(row: sqlite3.Row) -> OutputRow:
    return OutputRow(
        id=row["id"],
        job_id=row["job_id"],
        image_index=row["image_index"],
        path=Path(row["path"]),
        state=OutputState(row["state"]),
        sha256=row["sha256"],
        created=row["created"],
        completed=row["completed"],
    )


def job_label(job: JobRow, source: InputRow) -> str:
    """How logs and ``status`` name a job: its input's path, and ``#2`` for a file's second job."""
    return f"{source.relpath}" + (f" #{job.seq + 1}" if job.seq else "")


def refusal_from_row(row: sqlite3.Row) -> RefusalRow:
    files = tuple((str(relpath), Path(failed)) for relpath, failed in json.loads(row["files"]))
    return RefusalRow(
        id=row["id"], ts=row["ts"], relpath=row["relpath"], files=files, returned=row["returned"]
    )


def event_from_row(row: sqlite3.Row) -> EventRow:
    return EventRow(
        id=row["id"],
        ts=row["ts"],
        input_id=row["input_id"],
        job_id=row["job_id"],
        kind=row["kind"],
        detail=row["detail"],
    )
