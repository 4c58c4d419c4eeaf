"""``fooocusd retry``: bring a failed input back from failed/ and queue its jobs again.

The journal records the reopening before any file moves, and reconciliation finishes the moves
after a crash, so a retry interrupted half-way neither strands nor loses the input.

A file refused at intake never became a job (bad TOML, an unknown key): retrying it puts its
files back in the inbox under the names they came with, and the daemon reads them again.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from fooocusd.errors import InvalidInput
from fooocusd.intake.claim import digest_files, move_durably
from fooocusd.journal.journal import Journal, JournalError
from fooocusd.journal.rows import InputRow, InputState, JobRow, JobState, RefusalRow
from fooocusd.service.failing import error_file_for

_IDS_SHOWN = 10


def retry(journal: Journal, ref: str, inbox: Path, failed: Path) -> str:
    """Queue the job ``ref`` names again, or put the refused file it names back in the inbox,
    whichever happened last to that name. A job id always means that job."""
    if ref.strip().isdecimal() and journal.get_job(int(ref)) is not None:
        return retry_job(journal, ref, inbox)
    try:
        refusal = journal.find_refusal(ref)
    except JournalError as exc:
        raise InvalidInput(str(exc), hint=getattr(exc, "hint", "")) from exc
    if refusal is not None and refusal.ts >= _newest_input_time(journal, ref):
        return return_refused_files(journal, refusal, inbox)
    if refusal is None and not journal.find_jobs(ref) and (failed / ref).is_file():
        raise InvalidInput(
            f"{failed / ref} has no record of where it came from (it was refused by an older "
            "fooocusd, or just before a crash), so retry cannot put it back",
            hint="move it, and its picture if it had one, back into the inbox yourself",
        )
    return retry_job(journal, ref, inbox)


def _newest_input_time(journal: Journal, ref: str) -> float:
    inputs = {job.input_id for job in journal.find_jobs(ref)}
    rows = [journal.get_input(input_id) for input_id in inputs]
    return max((row.created for row in rows if row is not None), default=float("-inf"))


def return_refused_files(journal: Journal, refusal: RefusalRow, inbox: Path) -> str:
    """Move a refused drop's files from failed/ back to their places in the inbox."""
    first_failed = refusal.files[0][1] if refusal.files else None
    if first_failed is None or not os.path.lexists(first_failed):
        raise InvalidInput(
            f"{refusal.relpath} is no longer in the failed folder (looked for {first_failed})",
            hint="if you moved it back into the inbox yourself, the daemon reads it from there",
        )
    moves = [(failed, inbox / relpath) for relpath, failed in refusal.files if os.path.lexists(failed)]
    _move_back_to_inbox(moves, refusal.relpath)
    journal.mark_refusal_returned(refusal.id)
    return f"{_named(moves, inbox)} back in the inbox; the daemon reads it again"


def retry_job(journal: Journal, ref: str, inbox: Path) -> str:
    of_file = journal.jobs_of_file(ref)
    if len(of_file) > 1:
        return _retry_file(journal, ref, of_file, inbox)
    try:
        job = journal.find_job(ref)
        if job is None:
            raise InvalidInput(
                f"no job or refused file matches '{ref}'",
                hint="see `fooocusd status` for job ids; the journal forgets files that finished more "
                "than journal.keep_days ago, so move such a file from failed/ back into the inbox yourself",
            )
        source = journal.get_input(job.input_id)
        if source is not None and job.state == JobState.FAILED and _edited_where_it_failed(source):
            return _return_edited_input(journal, source, inbox)
        if source is not None:
            _require_files_still_there(source)
        plan = journal.retry_job(job.id)
    except JournalError as exc:
        raise InvalidInput(str(exc), hint=getattr(exc, "hint", "")) from exc
    if plan.restore_files:
        restore_input_files(journal, plan.input)
    return f"job {job.id} ({plan.input.relpath}) is queued again"


def retry_all_failed(journal: Journal, inbox: Path) -> tuple[list[str], list[str]]:
    """Queue every failed job again, input by input: (what was done, what was skipped and why).

    All the failed jobs of one input are reopened together before its files move back, so the
    daemon cannot finish the input again between two of them.
    """
    by_input: dict[int, list[JobRow]] = {}
    for job in journal.failed_jobs():
        by_input.setdefault(job.input_id, []).append(job)
    done: list[str] = []
    skipped: list[str] = []
    for input_id, jobs in by_input.items():
        source = journal.get_input(input_id)
        if source is None:
            continue
        try:
            done.append(_retry_input_jobs(journal, source, jobs, inbox))
        except (InvalidInput, JournalError) as exc:
            skipped.append(f"{source.relpath}: {exc}")
    return done, skipped


def _retry_file(journal: Journal, ref: str, jobs: list[JobRow], inbox: Path) -> str:
    """``fooocusd retry many.toml``: the failed and cancelled jobs of the newest input of that name,
    together (an older input of the same name was dropped again since)."""
    newest = [job for job in jobs if job.input_id == jobs[0].input_id]
    again = [job for job in newest if job.state in (JobState.FAILED, JobState.CANCELLED)]
    source = journal.get_input(newest[0].input_id)
    if not again or source is None:
        raise InvalidInput(
            f"none of the {len(newest)} jobs of {ref} failed or was cancelled; nothing to retry",
            hint="`fooocusd status` lists what failed",
        )
    try:
        return _retry_input_jobs(journal, source, again, inbox)
    except JournalError as exc:
        raise InvalidInput(str(exc), hint=getattr(exc, "hint", "")) from exc


def _retry_input_jobs(journal: Journal, source: InputRow, jobs: list[JobRow], inbox: Path) -> str:
    if _edited_where_it_failed(source):
        return _return_edited_input(journal, source, inbox)
    _require_files_still_there(source)
    plans = [journal.retry_job(job.id) for job in jobs]
    if any(plan.restore_files for plan in plans):
        restore_input_files(journal, plans[-1].input)
    ids = ", ".join(str(job.id) for job in jobs[:_IDS_SHOWN])
    more = f" and {len(jobs) - _IDS_SHOWN} more" if len(jobs) > _IDS_SHOWN else ""
    return f"{source.relpath}: job{'s' if len(jobs) > 1 else ''} {ids}{more} queued again"


def _edited_where_it_failed(source: InputRow) -> bool:
    """The user fixed the input in failed/: a retry must read it again, not rerun the old job."""
    if source.state != InputState.FINISHED or not source.files:
        return False
    finals = [Path(file.final_path) for file in source.files if file.final_path]
    if len(finals) != len(source.files) or not all(path.is_file() for path in finals):
        return False
    return digest_files(finals)[0] != source.sha256


def _return_edited_input(journal: Journal, source: InputRow, inbox: Path) -> str:
    moves: list[tuple[Path, Path]] = []
    for file in source.files:
        target = _inbox_place(Path(file.source_path), inbox, source.relpath)
        if file.role == "shared" and os.path.lexists(target):
            continue  # a copy: the original is still in the inbox for the other jobs naming it
        moves.append((Path(str(file.final_path)), target))
    _move_back_to_inbox(moves, source.relpath)
    journal.log_event("returned-edited", source.relpath, input_id=source.id)
    jobs = journal.jobs_for_input(source.id)
    again = f"; all {len(jobs)} of its jobs run again" if len(jobs) > 1 else ""
    return (
        f"{source.relpath} was changed in the failed folder, so it is read again rather than rerun "
        f"as it was: {_named(moves, inbox)} back in the inbox{again}"
    )


def _require_files_still_there(source: InputRow) -> None:
    if source.state != InputState.FINISHED:
        return
    finals = [Path(file.final_path) for file in source.files if file.final_path]
    if finals and not any(os.path.lexists(path) for path in finals):
        raise InvalidInput(
            f"the files of {source.relpath} are no longer in {source.final_dir}",
            hint="if you moved them back into the inbox yourself, the daemon reads them from there",
        )


def _move_back_to_inbox(moves: list[tuple[Path, Path]], relpath: str) -> None:
    """Move ``(in failed/, in the inbox)`` pairs, none if any place in the inbox is taken."""
    for _, target in moves:
        if os.path.lexists(target):
            raise InvalidInput(
                f"the inbox already holds {target}, so {relpath} was not put back",
                hint="move or rename that file first, then retry",
            )
    # The job file (first) moves last, so that it finds its picture already waiting beside it.
    for failed, target in reversed(moves):
        target.parent.mkdir(parents=True, exist_ok=True)
        move_durably(failed, target)
    if moves:
        error_file_for(moves[0][0]).unlink(missing_ok=True)


def _inbox_place(source_path: Path, inbox: Path, relpath: str) -> Path:
    try:
        return inbox / source_path.relative_to(inbox)
    except ValueError:  # the inbox moved since (another paths.inbox): the same subfolder there
        return inbox / PurePosixPath(relpath).parent / source_path.name


def _named(moves: list[tuple[Path, Path]], inbox: Path) -> str:
    names = ", ".join(target.relative_to(inbox).as_posix() for _, target in moves)
    return f"{names} {'is' if len(moves) == 1 else 'are'}"


def restore_input_files(journal: Journal, source: InputRow) -> None:
    """Move a reopened input's files back into processing/ (idempotent), then release its jobs."""
    for file in journal.files_for_input(source.id):
        claimed = Path(file.claimed_path)
        final = Path(file.final_path) if file.final_path else None
        if final is not None and final.exists() and not claimed.exists():
            claimed.parent.mkdir(parents=True, exist_ok=True)
            move_durably(final, claimed)
            error_file = error_file_for(final)
            if error_file.exists():
                error_file.unlink()
    journal.complete_reopen(source.id)
