"""``fooocusd submit --wait``: follow a submitted file through the running daemon to its images.

The daemon's journal says what became of the file, read-only, by the path it was dropped under
and the time it was submitted (so an earlier file of the same name does not count):

- its input is finished and every job of it ended: the images of the jobs that are done, and a
  line for each job that failed or was cancelled, with the error report in ``failed/``;
- it was refused at intake (``failed/`` with the reason), or skipped as content seen before
  (``intake.duplicates = "skip"``);
- else, still waiting, until the time limit, or until the daemon has been gone a while (it stays
  queued for the next start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from fooocusd.journal.journal import Journal, JournalNotReady
from fooocusd.journal.rows import TERMINAL_JOB_STATES, InputRow, InputState, JobRow, JobState, OutputState
from fooocusd.service.failing import error_file_for
from fooocusd.service.folders import Folders
from fooocusd.service.pause import current_pause
from fooocusd.service.state_lock import daemon_holding

Ending = Literal["waiting", "done", "failed", "refused", "skipped", "timed out", "daemon stopped"]
EXIT_CODES: dict[Ending, int] = {
    "done": 0,
    "failed": 1,
    "refused": 1,
    "skipped": 1,
    "timed out": 124,
    "daemon stopped": 3,
}
"""``fooocusd submit --wait``'s exit status for each ending (124 as ``timeout`` uses); "waiting"
is never the end."""
DAEMON_GONE_SECONDS = 10.0
"""How long the daemon may be missing (a restart) before waiting stops."""


@dataclass(frozen=True)
class Followed:
    """What became of a submitted file."""

    ending: Ending
    images: list[Path] = field(default_factory=list)
    """Every image written for it, in job and image order."""
    problems: list[str] = field(default_factory=list)
    """One line per job that failed or was cancelled, or the reason it was refused or skipped."""
    report: Path | None = None
    """The error report in ``failed/``, where there is one."""
    progress: str = ""
    """While waiting: where it is (taken in, queued, a job's step, finishing)."""


def follow(
    relpath: str,
    since: float,
    folders: Folders,
    *,
    timeout: float | None,
    poll_seconds: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[str], object] = lambda _text: None,
) -> Followed:
    """Wait for the file dropped as ``relpath`` (inbox-relative) at wall-clock time ``since``;
    ``on_progress`` is told where it is at each look."""
    started = clock()
    gone_since: float | None = None
    unreadable_since: float | None = None
    while True:
        try:
            found = look_up(relpath, since, folders)
            unreadable_since = None
        except JournalNotReady:
            # A daemon that has just taken the state folder may still be creating or upgrading its
            # journal; one that stays unready is said.
            unreadable_since = clock() if unreadable_since is None else unreadable_since
            if clock() - unreadable_since >= DAEMON_GONE_SECONDS:
                raise
            found = _NOT_TAKEN
        if found.ending != "waiting":
            return found
        pause = current_pause(folders.state) if found.progress == "queued" else None
        on_progress(
            found.progress
            if pause is None
            else f"queued; the queue is {pause.describe()} (`fooocusd resume`)"
        )
        now = clock()
        if daemon_holding(folders.state) is None:
            gone_since = now if gone_since is None else gone_since
            if now - gone_since >= DAEMON_GONE_SECONDS:
                name = PurePosixPath(relpath).name
                again = f"the daemon stopped; {name} runs when it starts again (`fooocusd status` follows it)"
                return Followed("daemon stopped", problems=[again])
        else:
            gone_since = None
        if timeout is not None and now - started >= timeout:
            name = PurePosixPath(relpath).name
            still = f"{name} is still queued or rendering; `fooocusd status` follows it"
            if pause is not None:
                still = f"{name} is queued, and the queue is {pause.describe()} (`fooocusd resume`)"
            return Followed("timed out", problems=[still])
        sleep(poll_seconds)


def look_up(relpath: str, since: float, folders: Folders) -> Followed:
    """What became of the file so far (ending "waiting" while it waits, is queued or renders)."""
    if not folders.journal_db.is_file():
        return _NOT_TAKEN
    journal = Journal.open_read_only(folders.journal_db)
    try:
        refusals = journal.refusals_of(relpath, since)
        if refusals:
            reasons = [
                event.detail
                for event in journal.events_since("refused", since)
                if event.detail.startswith((f"{relpath}:", f"{relpath} "))
            ]
            failed_path = refusals[0].files[0][1] if refusals[0].files else None
            report = error_file_for(failed_path) if failed_path is not None else None
            return Followed("refused", problems=reasons[:1] or [f"{relpath} was refused"], report=report)
        if any(event.detail == relpath for event in journal.events_since("duplicate-skipped", since)):
            return Followed(
                "skipped",
                problems=[
                    f"{relpath} was processed before (the same content), so it was skipped into done/ "
                    '(intake.duplicates = "skip"; change a line of it to render it again)'
                ],
            )
        inputs = journal.inputs_dropped_as(relpath, since)
        return _ended(journal, inputs[0]) if inputs else _NOT_TAKEN
    finally:
        journal.close()


def _ended(journal: Journal, source: InputRow) -> Followed:
    jobs = journal.jobs_for_input(source.id)
    if not all(job.state in TERMINAL_JOB_STATES for job in jobs):
        return Followed("waiting", progress=_progress(jobs))
    if source.state != InputState.FINISHED:  # its files are still being moved to done/ or failed/
        return Followed("waiting", progress="finishing")
    images = [
        output.path
        for job in jobs
        if job.state == JobState.DONE
        for output in sorted(journal.outputs_for(job.id), key=lambda row: row.image_index)
        if output.state == OutputState.COMPLETE
    ]
    problems = [
        f"job {job.id} cancelled (`fooocusd retry {job.id}` runs it again)"
        if job.state == JobState.CANCELLED
        else f"job {job.id} failed: {(job.error or 'no reason recorded').splitlines()[0]}"
        for job in jobs
        if job.state != JobState.DONE
    ]
    if not problems:
        return Followed("done", images)
    first = source.files[0].final_path if source.files else None
    report = error_file_for(first) if first is not None else None
    return Followed("failed", images, problems, report if report is not None and report.exists() else None)


def _progress(jobs: list[JobRow]) -> str:
    running = [job for job in jobs if job.state == JobState.RUNNING]
    if not running:
        return "queued"
    job = running[0]
    place = f"job {job.seq + 1} of {len(jobs)}: " if len(jobs) > 1 else ""
    if not job.progress_total:
        return f"{place}starting"
    return f"{place}step {job.progress_step}/{job.progress_total}"


_NOT_TAKEN = Followed("waiting", progress="waiting for the daemon to take it in")
