"""Finishing inputs (to done/ or failed/) and retrying jobs of finished inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.journal import InputState, JobState, Journal, JournalError
from tests.test_journal_helpers import FakeClock, add_input, spec_json


def _run(journal: Journal, state: str, error: str | None = None) -> int:
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    assert journal.finish_job(job.id, state, error)
    return job.id


def _final_targets(journal: Journal, input_id: int, folder: Path) -> dict[Path, Path | None]:
    found = journal.get_input(input_id)
    assert found is not None
    return {f.claimed_path: folder / f.source_path.name for f in found.files}


def _finish(journal: Journal, input_id: int, folder: Path) -> None:
    journal.begin_finish(input_id, folder, _final_targets(journal, input_id, folder))
    journal.complete_finish(input_id)


def test_input_is_ready_to_finish_only_when_all_its_jobs_are_terminal(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = add_input(journal, tmp_path, "three.txt", [(spec_json(str(n)), 0) for n in range(3)])
    _run(journal, "done")
    assert journal.inputs_ready_to_finish() == []
    _run(journal, "done")
    journal.claim_next_job(lease_seconds=60)
    assert journal.inputs_ready_to_finish() == [], "a running job holds the input"
    with pytest.raises(JournalError, match="1 unfinished job"):
        journal.begin_finish(
            input_id, tmp_path / "done", _final_targets(journal, input_id, tmp_path / "done")
        )

    [last] = [j for j in journal.jobs_for_input(input_id) if j.state == JobState.RUNNING]
    journal.finish_job(last.id, "done")
    [ready] = journal.inputs_ready_to_finish()
    assert (ready.id, journal.input_outcome(input_id)) == (input_id, "done")


def test_one_failed_job_makes_the_outcome_failed_and_cancelled_ones_do_not(
    tmp_path: Path, journal: Journal
) -> None:
    mixed = add_input(journal, tmp_path, "mixed.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    _run(journal, "done")
    _run(journal, "failed", "prompt refers to an unknown style 'Fooocus Sharpest'")
    cancelled = add_input(journal, tmp_path, "cancelled.txt", [(spec_json("c"), 0), (spec_json("d"), 0)])
    _run(journal, "done")
    [pending] = [j for j in journal.jobs_for_input(cancelled) if j.state == JobState.QUEUED]
    journal.cancel_job(pending.id)

    outcomes = {ready.id: journal.input_outcome(ready.id) for ready in journal.inputs_ready_to_finish()}
    assert outcomes == {mixed: "failed", cancelled: "done"}


def test_input_waits_for_a_cancelled_worker_to_let_go(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    input_id = add_input(journal, tmp_path)
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.cancel_job(job.id)
    assert journal.inputs_ready_to_finish() == [], "the worker may still be reading the input"
    with pytest.raises(JournalError, match="still stopping"):
        journal.retry_job(job.id)

    assert not journal.heartbeat(job.id, 1, 30, lease_seconds=60)
    assert [r.id for r in journal.inputs_ready_to_finish()] == [input_id]


def test_cancelled_job_whose_worker_died_stops_holding_its_input_when_the_lease_ends(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    input_id = add_input(journal, tmp_path)
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.cancel_job(job.id)
    clock.advance(60)
    assert [r.id for r in journal.inputs_ready_to_finish()] == [input_id]


def test_finish_records_targets_before_moves_and_then_confirms(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path)
    _run(journal, "done")
    targets = _final_targets(journal, input_id, tmp_path / "done")
    journal.begin_finish(input_id, tmp_path / "done", targets)
    journal.begin_finish(input_id, tmp_path / "done", targets)  # a restart may record them again

    [finishing] = journal.inputs_finishing()
    assert finishing.state == InputState.FINISHING and finishing.final_dir == tmp_path / "done"
    assert {f.claimed_path: f.final_path for f in finishing.files} == targets
    assert journal.inputs_ready_to_finish() == []
    with pytest.raises(JournalError, match="already being moved"):
        journal.begin_finish(
            input_id, tmp_path / "failed", _final_targets(journal, input_id, tmp_path / "failed")
        )

    journal.complete_finish(input_id)
    journal.complete_finish(input_id)
    finished = journal.get_input(input_id)
    assert finished is not None and finished.state == InputState.FINISHED
    assert journal.inputs_finishing() == []


def test_begin_finish_must_name_every_claimed_file(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path)
    _run(journal, "done")
    with pytest.raises(ValueError, match="exactly the claimed files"):
        journal.begin_finish(
            input_id, tmp_path / "done", {tmp_path / "elsewhere.txt": tmp_path / "done" / "x"}
        )


def test_retry_of_a_failed_job_in_an_unfinished_input_queues_it_at_once(
    tmp_path: Path, journal: Journal
) -> None:
    add_input(journal, tmp_path, "two.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    failed_id = _run(journal, "failed", "out of memory, gave up")

    plan = journal.retry_job(failed_id)
    assert not plan.restore_files
    assert (plan.job.state, plan.job.attempts, plan.job.error) == (JobState.QUEUED, 0, None)
    assert plan.input.state == InputState.CLAIMED


def test_retry_of_a_finished_input_holds_the_job_until_its_files_are_back(
    tmp_path: Path, db_path: Path, journal: Journal, clock: FakeClock
) -> None:
    input_id = add_input(journal, tmp_path, "bad.txt")
    failed_id = _run(journal, "failed", "the checkpoint file is damaged")
    _finish(journal, input_id, tmp_path / "failed")

    with Journal.open(db_path, "cli", clock) as cli:
        plan = cli.retry_job(failed_id)
    assert plan.restore_files
    assert plan.job.state == JobState.CLAIMING
    assert plan.input.state == InputState.REOPENING
    assert [f.final_path for f in plan.input.files] == [tmp_path / "failed" / "bad.txt"]
    assert journal.claim_next_job(lease_seconds=60) is None, "the files are still in failed/"
    assert [i.id for i in journal.inputs_reopening()] == [input_id]

    journal.complete_reopen(input_id)
    reopened = journal.get_input(input_id)
    assert reopened is not None
    assert (reopened.state, reopened.final_dir, [f.final_path for f in reopened.files]) == (
        InputState.CLAIMED,
        None,
        [None],
    )
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None and job.id == failed_id and job.attempts == 1
    journal.finish_job(job.id, "done")
    assert [r.id for r in journal.inputs_ready_to_finish()] == [input_id]
    assert journal.input_outcome(input_id) == "done"


def test_retry_explains_why_it_cannot_run_a_job(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path)
    queued = journal.jobs_for_input(input_id)[0]
    with pytest.raises(JournalError, match="is queued") as caught:
        journal.retry_job(queued.id)
    assert "cancel it first" in caught.value.hint
    with pytest.raises(JournalError, match="no job 4242"):
        journal.retry_job(4242)

    job_id = _run(journal, "failed", "bad image")
    journal.begin_finish(
        input_id, tmp_path / "failed", _final_targets(journal, input_id, tmp_path / "failed")
    )
    with pytest.raises(JournalError, match="being moved") as caught:
        journal.retry_job(job_id)
    assert "try again" in caught.value.hint


def test_retry_is_refused_when_the_input_was_deleted_after_success(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path, "two.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    _run(journal, "done")
    [pending] = [j for j in journal.jobs_for_input(input_id) if j.state == JobState.QUEUED]
    journal.cancel_job(pending.id)
    found = journal.get_input(input_id)
    assert found is not None
    journal.begin_finish(input_id, None, {f.claimed_path: None for f in found.files})
    journal.complete_finish(input_id)

    with pytest.raises(JournalError, match="deleted") as caught:
        journal.retry_job(pending.id)
    assert "inbox again" in caught.value.hint


def test_retry_of_a_job_cancelled_during_its_claim_waits_for_the_claim(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = add_input(journal, tmp_path, complete=False)
    [job] = journal.jobs_for_input(input_id)
    assert journal.cancel_job(job.id)

    plan = journal.retry_job(job.id)
    assert (plan.restore_files, plan.job.state) == (False, JobState.CLAIMING)
    assert journal.claim_next_job(lease_seconds=60) is None, "its file is not in processing/ yet"
    journal.complete_claim(input_id)
    claimed = journal.claim_next_job(lease_seconds=60)
    assert claimed is not None and claimed.id == job.id


def test_begin_finish_refuses_while_a_cancelled_worker_still_holds_a_job(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = add_input(journal, tmp_path)
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.cancel_job(job.id)
    with pytest.raises(JournalError, match="unfinished") as caught:
        journal.begin_finish(
            input_id, tmp_path / "done", _final_targets(journal, input_id, tmp_path / "done")
        )
    assert "inputs_ready_to_finish" in caught.value.hint


def test_begin_finish_accepts_string_paths_and_files_for_input_shows_them(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = add_input(journal, tmp_path)
    _run(journal, "done")
    [file] = journal.files_for_input(input_id)
    journal.begin_finish(
        input_id, str(tmp_path / "done"), {str(file.claimed_path): str(tmp_path / "done/cat.txt")}
    )

    [finishing] = journal.files_for_input(input_id)
    assert finishing.final_path == tmp_path / "done" / "cat.txt"
    finished = journal.get_input(input_id)
    assert finished is not None and finished.final_dir == tmp_path / "done"
