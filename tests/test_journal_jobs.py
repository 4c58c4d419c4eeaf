"""Running jobs: claim order, leases, heartbeats, retries, interruptions, crash recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fooocusd.journal import JobRow, JobState, Journal
from tests.test_journal_helpers import FakeClock, add_input, spec_json


@pytest.fixture
def journal(db_path: Path, clock: FakeClock) -> Iterator[Journal]:
    with Journal.open(db_path, "host:gpu0", clock) as opened:
        yield opened


def _claim(journal: Journal, lease_seconds: float = 60) -> JobRow:
    job = journal.claim_next_job(lease_seconds)
    assert job is not None, "expected a runnable job"
    return job


def _one_job(journal: Journal, tmp_path: Path, name: str = "cat.txt") -> int:
    [job] = journal.jobs_for_input(add_input(journal, tmp_path, name))
    return job.id


def test_jobs_run_highest_priority_first_then_in_arrival_order(tmp_path: Path, journal: Journal) -> None:
    add_input(journal, tmp_path, "a.txt", [(spec_json("a0"), 0), (spec_json("a1"), 0)])
    add_input(journal, tmp_path, "b.txt", [(spec_json("b0"), 10)])
    add_input(journal, tmp_path, "c.txt", [(spec_json("c0"), -5), (spec_json("c1"), 10)])

    order = [_claim(journal).spec().prompt for _ in range(5)]
    assert order == ["b0", "c1", "a0", "a1", "c0"]
    assert journal.claim_next_job(lease_seconds=60) is None


def test_next_runnable_jobs_lists_the_claim_order_without_claiming(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    add_input(journal, tmp_path, "a.txt", [(spec_json("a0"), 0), (spec_json("a1"), 0)])
    add_input(journal, tmp_path, "b.txt", [(spec_json("b0"), 10)])
    add_input(journal, tmp_path, "c.txt", [(spec_json("c0"), 0)])
    journal.retry_later(_claim(journal).id, 30, "busy")  # b0 waits 30 s: not runnable now

    ahead = journal.next_runnable_jobs(limit=2)
    assert [job.spec().prompt for job in ahead] == ["a0", "a1"]
    assert all(job.state == JobState.QUEUED for job in journal.next_runnable_jobs(limit=10))
    assert [_claim(journal).spec().prompt for _ in range(2)] == ["a0", "a1"]
    clock.now += 31
    assert [job.spec().prompt for job in journal.next_runnable_jobs(limit=10)] == ["b0", "c0"]


def test_claim_marks_the_job_running_with_a_lease_for_this_owner(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    job = _claim(journal, lease_seconds=120)
    assert job.id == job_id
    assert (job.state, job.lease_owner, job.lease_expires, job.started, job.attempts) == (
        JobState.RUNNING,
        "host:gpu0",
        clock.now + 120,
        clock.now,
        1,
    )


def test_retry_later_waits_until_not_before(tmp_path: Path, journal: Journal, clock: FakeClock) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal)
    assert journal.retry_later(job_id, 30, "disk full while saving")

    assert journal.claim_next_job(lease_seconds=60) is None
    assert journal.status()["waiting_for_retry"] == 1
    clock.advance(29.9)
    assert journal.claim_next_job(lease_seconds=60) is None
    clock.advance(0.1)
    again = _claim(journal)
    assert (again.id, again.attempts, again.error) == (job_id, 2, "disk full while saving")


def test_fail_or_retry_doubles_the_delay_then_gives_up(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    waits: list[float] = []
    for _ in range(2):
        _claim(journal)
        outcome = journal.fail_or_retry(job_id, "CUDA out of memory", max_attempts=3, first_delay_seconds=10)
        assert outcome == JobState.QUEUED
        job = journal.get_job(job_id)
        assert job is not None
        waits.append(job.not_before - clock.now)
        clock.advance(waits[-1])
    assert waits == [10, 20]

    _claim(journal)
    assert journal.fail_or_retry(job_id, "CUDA out of memory", max_attempts=3, first_delay_seconds=10) == (
        JobState.FAILED
    )
    failed = journal.get_job(job_id)
    assert failed is not None
    assert failed.error == "gave up after 3 attempts: CUDA out of memory"


def test_heartbeat_records_progress_and_extends_the_lease(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal, lease_seconds=60)
    clock.advance(50)
    assert journal.heartbeat(job_id, 7, 30, lease_seconds=60)

    job = journal.get_job(job_id)
    assert job is not None
    assert (job.progress_step, job.progress_total, job.lease_expires) == (7, 30, clock.now + 60)
    clock.advance(59)
    assert journal.recover_stale_jobs() == [], "an extended lease is not stale"


def test_cancel_is_noticed_by_the_running_worker_at_its_next_heartbeat(
    tmp_path: Path, db_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal)
    with Journal.open(db_path, "cli", clock) as cli:
        assert cli.cancel_job(job_id)
        assert not cli.cancel_job(job_id), "cancelling twice changes nothing"

    assert not journal.heartbeat(job_id, 3, 30, lease_seconds=60)
    assert not journal.finish_job(job_id, "done"), "a cancel wins over a late finish"
    job = journal.get_job(job_id)
    assert job is not None and job.state == JobState.CANCELLED and job.lease_owner is None


def test_cancel_of_a_queued_job_means_it_never_runs(tmp_path: Path, journal: Journal) -> None:
    job_id = _one_job(journal, tmp_path)
    assert journal.cancel_job(job_id)
    assert journal.claim_next_job(lease_seconds=60) is None
    assert not journal.cancel_job(999), "an unknown job cannot be cancelled"


def test_finish_records_done_and_failed_with_the_reason(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    done_id = _one_job(journal, tmp_path, "a.txt")
    failed_id = _one_job(journal, tmp_path, "b.txt")
    _claim(journal)
    _claim(journal)
    clock.advance(5)
    assert journal.finish_job(done_id, JobState.DONE)
    assert journal.finish_job(failed_id, "failed", "the input image is not a PNG, JPEG or WebP file")

    done, failed = journal.get_job(done_id), journal.get_job(failed_id)
    assert done is not None and failed is not None
    assert (done.state, done.finished, done.lease_owner) == (JobState.DONE, clock.now, None)
    assert (failed.state, failed.error) == (
        JobState.FAILED,
        "the input image is not a PNG, JPEG or WebP file",
    )


def test_failing_a_job_without_a_reason_is_refused(tmp_path: Path, journal: Journal) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal)
    with pytest.raises(ValueError, match="error message"):
        journal.finish_job(job_id, "failed")
    with pytest.raises(ValueError):
        journal.finish_job(job_id, "cancelled")


def test_another_owner_cannot_finish_or_heartbeat_my_job(
    tmp_path: Path, db_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal)
    with Journal.open(db_path, "host:gpu1", clock) as other:
        assert not other.heartbeat(job_id, 1, 2, lease_seconds=60)
        assert not other.finish_job(job_id, "done")
        assert not other.release_interrupted(job_id)
        assert other.fail_or_retry(job_id, "x", max_attempts=3, first_delay_seconds=1) is None
    job = journal.get_job(job_id)
    assert job is not None and job.state == JobState.RUNNING


def test_interrupted_job_is_requeued_without_counting_the_attempt(tmp_path: Path, journal: Journal) -> None:
    job_id = _one_job(journal, tmp_path)
    assert _claim(journal).attempts == 1
    journal.heartbeat(job_id, 12, 30, lease_seconds=60)
    assert journal.release_interrupted(job_id)

    job = journal.get_job(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.progress_step, job.lease_owner) == (JobState.QUEUED, 0, 0, None)
    assert _claim(journal).attempts == 1


def test_expired_lease_of_a_dead_worker_is_requeued_and_counts_a_crash(
    tmp_path: Path, db_path: Path, clock: FakeClock
) -> None:
    with Journal.open(db_path, "host:gpu1", clock) as dead:
        job_id = _one_job(dead, tmp_path)
        _claim(dead, lease_seconds=60)
    with Journal.open(db_path, "host:gpu0", clock) as survivor:
        clock.advance(59)
        assert survivor.recover_stale_jobs() == []
        clock.advance(1)
        [recovered] = survivor.recover_stale_jobs()
        assert (recovered.id, recovered.state, recovered.crashes, recovered.attempts) == (
            job_id,
            JobState.QUEUED,
            1,
            1,
        )
        assert recovered.lease_owner is None
        assert _claim(survivor).id == job_id


def test_at_startup_jobs_held_by_my_previous_process_are_recovered_at_once(
    tmp_path: Path, db_path: Path, clock: FakeClock
) -> None:
    crashed = Journal.open(db_path, "host:gpu0", clock)
    job_id = _one_job(crashed, tmp_path)
    _claim(crashed, lease_seconds=600)
    del crashed
    with Journal.open(db_path, "host:gpu1", clock) as neighbour:
        assert neighbour.recover_stale_jobs(at_startup=True) == [], "a live neighbour's job is left alone"
    with Journal.open(db_path, "host:gpu0", clock) as restarted:
        assert restarted.recover_stale_jobs() == [], "without at_startup the lease is respected"
        [recovered] = restarted.recover_stale_jobs(at_startup=True)
        assert (recovered.id, recovered.state, recovered.crashes) == (job_id, JobState.QUEUED, 1)


def test_job_that_crashes_the_daemon_twice_is_quarantined_as_poison(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal)
    [first] = journal.recover_stale_jobs(at_startup=True)
    assert first.state == JobState.QUEUED
    _claim(journal)
    [second] = journal.recover_stale_jobs(at_startup=True)

    assert (second.id, second.state, second.crashes) == (job_id, JobState.FAILED, 2)
    assert second.error == "crashed the daemon 2 times; quarantined as a poison input"
    assert journal.claim_next_job(lease_seconds=60) is None
    kinds = [e.kind for e in journal.events_for_input(second.input_id)]
    assert kinds.count("requeued_after_crash") == 1 and kinds[-1] == "quarantined"


def test_max_crashes_is_configurable(tmp_path: Path, journal: Journal) -> None:
    _one_job(journal, tmp_path)
    for _ in range(3):
        _claim(journal)
        [job] = journal.recover_stale_jobs(max_crashes=4, at_startup=True)
        assert job.state == JobState.QUEUED
    _claim(journal)
    [job] = journal.recover_stale_jobs(max_crashes=4, at_startup=True)
    assert job.state == JobState.FAILED
    assert job.error is not None and "4 times" in job.error


def test_its_own_running_job_is_not_taken_back_when_a_suspend_or_clock_jump_expired_the_lease(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    job_id = _one_job(journal, tmp_path)
    _claim(journal, lease_seconds=60)
    clock.advance(3600)  # the laptop slept for an hour in the middle of the job
    assert journal.recover_stale_jobs() == []
    assert journal.heartbeat(job_id, 5, 30, lease_seconds=60), "its worker carries on"
    job = journal.get_job(job_id)
    assert job is not None and (job.state, job.crashes) == (JobState.RUNNING, 0)
