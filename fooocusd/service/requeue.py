"""``fooocusd retry``: bring a failed input back from failed/ and queue its jobs again.

The journal records the reopening before any file moves, and reconciliation finishes the moves
after a crash, so a retry interrupted half-way neither strands nor loses the input.
"""

from __future__ import annotations

from pathlib import Path

from fooocusd.errors import InvalidInput
from fooocusd.intake.claim import move_durably
from fooocusd.journal.journal import Journal, JournalError
from fooocusd.journal.rows import InputRow
from fooocusd.service.failing import error_file_for


def retry_job(journal: Journal, ref: str) -> str:
    try:
        job = journal.find_job(ref)
        if job is None:
            raise InvalidInput(f"no job matches '{ref}'", hint="see `fooocusd status` for job ids")
        plan = journal.retry_job(job.id)
    except JournalError as exc:
        raise InvalidInput(str(exc), hint=getattr(exc, "hint", "")) from exc
    if plan.restore_files:
        restore_input_files(journal, plan.input)
    return f"job {job.id} ({plan.input.relpath}) is queued again"


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
