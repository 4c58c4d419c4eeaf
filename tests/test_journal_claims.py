"""Claiming inputs: the two-step claim, abandoned claims, duplicates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fooocusd.journal import InputState, JobState, Journal, JournalError
from tests.test_journal_helpers import add_input, spec_json


def test_begin_claim_records_input_files_and_jobs_that_cannot_run_yet(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = journal.begin_claim(
        "key-1",
        "portraits/anna.toml",
        "aa" * 32,
        123,
        files=[
            ("spec", tmp_path / "inbox/portraits/anna.toml", tmp_path / "processing/key-1__anna.toml"),
            ("image", tmp_path / "inbox/portraits/anna.png", tmp_path / "processing/key-1__anna.png"),
        ],
        specs=[(spec_json("first"), 5), (spec_json("second"), 0)],
    )

    claimed = journal.get_input(input_id)
    assert claimed is not None
    assert (claimed.key, claimed.relpath, claimed.size, claimed.state) == (
        "key-1",
        "portraits/anna.toml",
        123,
        InputState.CLAIMING,
    )
    assert [(f.role, f.claimed_path.name, f.final_path) for f in claimed.files] == [
        ("spec", "key-1__anna.toml", None),
        ("image", "key-1__anna.png", None),
    ]
    jobs = journal.jobs_for_input(input_id)
    assert [(j.seq, j.priority, j.state) for j in jobs] == [
        (0, 5, JobState.CLAIMING),
        (1, 0, JobState.CLAIMING),
    ]
    assert jobs[0].spec().prompt == "first"
    assert journal.claim_next_job(lease_seconds=60) is None
    assert [i.id for i in journal.claims_in_progress()] == [input_id]


def test_complete_claim_queues_the_jobs_and_can_be_repeated(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path, complete=False)
    journal.complete_claim(input_id)
    journal.complete_claim(input_id)  # reconciliation may confirm twice

    claimed = journal.get_input(input_id)
    assert claimed is not None and claimed.state == InputState.CLAIMED
    assert [j.state for j in journal.jobs_for_input(input_id)] == [JobState.QUEUED]
    assert journal.claims_in_progress() == []


def test_abandoned_claim_never_runs_and_keeps_the_reason(tmp_path: Path, journal: Journal) -> None:
    input_id = add_input(journal, tmp_path, complete=False)
    journal.abandon_claim(input_id, "the file vanished from the inbox before it could be moved")

    abandoned = journal.get_input(input_id)
    assert abandoned is not None and abandoned.state == InputState.ABANDONED
    assert abandoned.error == "the file vanished from the inbox before it could be moved"
    assert journal.jobs_for_input(input_id) == []
    assert journal.claim_next_job(lease_seconds=60) is None
    assert journal.claims_in_progress() == []
    with pytest.raises(JournalError, match="abandoned"):
        journal.complete_claim(input_id)


def test_claim_key_can_only_be_used_once(tmp_path: Path, journal: Journal) -> None:
    files = [("spec", tmp_path / "a.txt", tmp_path / "p" / "a.txt")]
    journal.begin_claim("same", "a.txt", "00" * 32, 1, files, [(spec_json(), 0)])  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="already in the journal") as caught:
        journal.begin_claim("same", "a.txt", "00" * 32, 1, files, [(spec_json(), 0)])  # type: ignore[arg-type]
    assert "uuid4" in caught.value.hint


def test_spec_that_is_not_json_is_refused_before_anything_is_written(
    tmp_path: Path, journal: Journal
) -> None:
    with pytest.raises(ValueError):
        add_input(journal, tmp_path, specs=[("prompt = 'toml, not json'", 0)])
    assert journal.status()["inputs"]["claiming"] == 0


def test_duplicates_are_found_by_content_hash_but_abandoned_claims_are_not(
    tmp_path: Path, journal: Journal
) -> None:
    first = add_input(journal, tmp_path, "cat.txt", content=b"a cat")
    second = add_input(journal, tmp_path, "cat copy.txt", content=b"a cat")
    vanished = add_input(journal, tmp_path, "cat again.txt", content=b"a cat", complete=False)
    journal.abandon_claim(vanished, "gone")
    add_input(journal, tmp_path, "dog.txt", content=b"a dog")

    found = journal.find_inputs_by_sha256(hashlib.sha256(b"a cat").hexdigest())
    assert [i.id for i in found] == [first, second]


def test_input_with_no_jobs_and_an_error_is_ready_to_finish_as_failed(
    tmp_path: Path, journal: Journal
) -> None:
    input_id = journal.begin_claim(
        "k",
        "broken.toml",
        "cd" * 32,
        9,
        files=[("spec", tmp_path / "broken.toml", tmp_path / "p" / "broken.toml")],
        specs=[],
        error="broken.toml line 3: expected '=' after a key",
    )
    journal.complete_claim(input_id)

    [ready] = journal.inputs_ready_to_finish()
    assert (ready.id, journal.input_outcome(input_id), journal.jobs_for_input(input_id)) == (
        input_id,
        "failed",
        [],
    )
    assert ready.error == "broken.toml line 3: expected '=' after a key"
