"""Where a claimed input goes once all its jobs have ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fooocusd.journal import JobState, Journal
from fooocusd.service.finisher import Finisher
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings
from tests.test_journal_helpers import add_input, spec_json


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3", "gpu0") as opened:
        yield opened


def _finisher(tmp_path: Path, journal: Journal, after_success: str) -> Finisher:
    settings = Settings.model_validate(
        {
            "paths": {
                "inbox": tmp_path / "inbox",
                "outbox": tmp_path / "outbox",
                "state": tmp_path / "state",
            },
            "outbox": {"after_success": after_success},
        }
    )
    return Finisher(settings, Folders.from_paths(settings.paths.resolved()), journal)


def _claimed(tmp_path: Path, journal: Journal, name: str, jobs: int) -> tuple[int, Path]:
    input_id = add_input(journal, tmp_path, name, [(spec_json(f"p{n}"), 0) for n in range(jobs)])
    found = journal.get_input(input_id)
    assert found is not None
    [file] = found.files
    file.claimed_path.parent.mkdir(parents=True, exist_ok=True)
    file.claimed_path.write_text("a cat\n")
    return input_id, file.claimed_path


def _run_one(journal: Journal) -> None:
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None and journal.finish_job(job.id, "done", None)


def test_an_input_with_a_cancelled_job_is_moved_to_done_even_when_success_deletes_inputs(
    tmp_path: Path, journal: Journal
) -> None:
    input_id, claimed = _claimed(tmp_path, journal, "two.txt", jobs=2)
    _run_one(journal)
    [pending] = [job for job in journal.jobs_for_input(input_id) if job.state == JobState.QUEUED]
    journal.cancel_job(pending.id)

    assert _finisher(tmp_path, journal, "delete").finish_ready() == 1
    assert not claimed.exists()
    assert (tmp_path / "done" / "two.txt").read_text() == "a cat\n"
    journal.retry_job(pending.id)  # the input is there to come back


def test_an_input_whose_jobs_all_succeeded_is_deleted_when_success_deletes_inputs(
    tmp_path: Path, journal: Journal
) -> None:
    _, claimed = _claimed(tmp_path, journal, "one.txt", jobs=1)
    _run_one(journal)

    assert _finisher(tmp_path, journal, "delete").finish_ready() == 1
    assert not claimed.exists()
    assert not (tmp_path / "done").exists() or list((tmp_path / "done").iterdir()) == []
