"""What the CLI sees: status snapshots, finding jobs by reference, the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fooocusd.journal import Journal, JournalError
from tests.test_journal_helpers import FakeClock, add_input, spec_json


def test_status_counts_jobs_and_shows_running_progress_and_recent_failures(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    add_input(journal, tmp_path, "broken.txt")
    bad = journal.claim_next_job(lease_seconds=60)
    assert bad is not None
    journal.finish_job(bad.id, "failed", "unknown sampler 'euler_z'")
    add_input(
        journal, tmp_path, "night/sky.txt", [(spec_json("a"), 0), (spec_json("b"), 0), (spec_json("c"), 0)]
    )
    running = journal.claim_next_job(lease_seconds=60)
    assert running is not None
    journal.heartbeat(running.id, 12, 30, lease_seconds=60)
    waiting = journal.claim_next_job(lease_seconds=60)
    assert waiting is not None
    journal.retry_later(waiting.id, 100, "device busy")

    status = journal.status()
    assert json.loads(json.dumps(status)) == status, "status must be JSON-ready"
    assert status["counts"] == {
        "claiming": 0,
        "queued": 2,
        "running": 1,
        "done": 0,
        "failed": 1,
        "cancelled": 0,
    }
    assert (status["queued"], status["waiting_for_retry"]) == (2, 1)
    [shown] = status["running"]
    assert (
        shown["id"],
        shown["relpath"],
        shown["progress_step"],
        shown["progress_total"],
        shown["started"],
    ) == (
        running.id,
        "night/sky.txt",
        12,
        30,
        clock.now,
    )
    assert status["recent_failures"] == [
        {
            "id": bad.id,
            "relpath": "broken.txt",
            "error": "unknown sampler 'euler_z'",
            "finished": clock.now,
            "dropped_again": False,
        }
    ]
    assert status["inputs"]["claimed"] == 2


def test_recent_failures_are_newest_first_and_limited(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    for n in range(4):
        add_input(journal, tmp_path, f"f{n}.txt")
        job = journal.claim_next_job(lease_seconds=60)
        assert job is not None
        journal.finish_job(job.id, "failed", f"error {n}")
        clock.advance(1)
    failures = journal.status(recent_failures=2)["recent_failures"]
    assert [f["error"] for f in failures] == ["error 3", "error 2"]


def test_find_jobs_accepts_a_job_id_or_the_start_of_an_input_path(tmp_path: Path, journal: Journal) -> None:
    cats = add_input(journal, tmp_path, "animals/cats.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    dogs = add_input(journal, tmp_path, "animals/dogs.txt")
    add_input(journal, tmp_path, "Animals_100%.txt")
    cat_jobs = journal.jobs_for_input(cats)

    assert journal.find_jobs(str(cat_jobs[1].id)) == [cat_jobs[1]]
    assert [j.id for j in journal.find_jobs("animals/cats")] == [j.id for j in cat_jobs]
    assert [j.input_id for j in journal.find_jobs("animals/")] == [dogs, cats, cats], "newest input first"
    assert journal.find_jobs("animals_") == [], "matching is literal and case-sensitive"
    assert len(journal.find_jobs("Animals_100%")) == 1
    assert journal.find_jobs("") == []
    assert journal.find_jobs("9999") == []


def test_find_jobs_prefers_the_input_a_name_means_whole_over_those_it_begins(
    tmp_path: Path, journal: Journal
) -> None:
    short = add_input(journal, tmp_path, "j2.txt")
    add_input(journal, tmp_path, "j20.txt")
    add_input(journal, tmp_path, "j21.toml")

    assert [job.input_id for job in journal.find_jobs("j2")] == [short]
    assert [job.input_id for job in journal.find_jobs("j2.txt")] == [short]
    assert len(journal.find_jobs("j")) == 3
    assert len(journal.find_jobs("j2.")) == 1


def test_find_job_returns_the_single_match_or_names_the_candidates(tmp_path: Path, journal: Journal) -> None:
    cats = add_input(journal, tmp_path, "animals/cats.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    [dog] = journal.jobs_for_input(add_input(journal, tmp_path, "animals/dogs.txt"))
    first, second = journal.jobs_for_input(cats)

    assert journal.find_job("animals/dogs") == dog
    assert journal.find_job(str(second.id)) == second
    assert journal.find_job("birds") is None
    with pytest.raises(JournalError, match="matches 2 jobs") as caught:
        journal.find_job("animals/cats")
    assert f"{first.id} (animals/cats.txt #1)" in caught.value.message
    assert f"{second.id} (animals/cats.txt #2)" in caught.value.message
    assert "job id" in caught.value.hint


def test_events_tell_the_whole_story_of_an_input(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path, "story.txt")
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.retry_later(job.id, 0, "CUDA out of memory")
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.log_event("engine", "loaded sd_xl_base_1.0.safetensors in 4.2 s", job_id=job.id)
    journal.finish_job(job.id, "done")

    events = journal.events_for_input(input_id)
    assert [e.kind for e in events] == [
        "claiming",
        "claimed",
        "started",
        "retry_scheduled",
        "started",
        "engine",
        "done",
    ]
    assert "CUDA out of memory" in events[3].detail
    assert events[2].detail == "attempt 1 on gpu0" and events[4].detail == "attempt 2 on gpu0"
    assert events[5].job_id == job.id and events[5].input_id == input_id
