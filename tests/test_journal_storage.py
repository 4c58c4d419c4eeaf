"""The journal file itself: pragmas, schema versions, durability, read-only access."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import time
from pathlib import Path

import pytest

import fooocusd.journal.journal as journal_module
from fooocusd.errors import ConfigError, TransientError
from fooocusd.journal import SCHEMA_VERSION, InputState, JobState, Journal, JournalError
from tests.test_journal_helpers import FakeClock, add_input, spec_json


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


def test_new_journal_uses_wal_full_sync_foreign_keys_and_busy_timeout(db_path: Path) -> None:
    with Journal.open(db_path, "gpu0") as journal:
        pragmas = journal.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] == 10_000
    assert pragmas["user_version"] == SCHEMA_VERSION


def test_open_creates_the_missing_state_folder(db_path: Path) -> None:
    assert not db_path.parent.exists()
    Journal.open(db_path, "gpu0").close()
    assert db_path.is_file()


def test_reopening_a_current_journal_keeps_its_version_and_rows(tmp_path: Path, db_path: Path) -> None:
    with Journal.open(db_path, "gpu0") as journal:
        input_id = add_input(journal, tmp_path)
    with Journal.open(db_path, "gpu0") as journal:
        assert journal.pragmas()["user_version"] == SCHEMA_VERSION
        assert journal.get_input(input_id) is not None


def test_journal_from_a_newer_fooocusd_is_refused_with_a_hint(db_path: Path) -> None:
    Journal.open(db_path, "gpu0").close()
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(ConfigError) as caught:
        Journal.open(db_path, "gpu0")
    assert "newer fooocusd" in caught.value.hint
    assert str(db_path) in caught.value.explain()


def test_a_file_that_is_not_a_database_is_refused_with_a_hint(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a shopping list, not a journal" * 100)
    with pytest.raises(ConfigError) as caught:
        Journal.open(db_path, "gpu0")
    assert "move it aside" in caught.value.hint


def test_rejected_claim_leaves_no_trace(tmp_path: Path, db_path: Path) -> None:
    with Journal.open(db_path, "gpu0") as journal:
        with pytest.raises(sqlite3.IntegrityError):
            journal.begin_claim(
                "k1",
                "clip.txt",
                "ab" * 32,
                3,
                files=[("video", tmp_path / "clip.txt", tmp_path / "p" / "clip.txt")],  # type: ignore[list-item]
                specs=[(spec_json(), 0)],
            )
        assert journal.status()["inputs"]["claiming"] == 0
        assert journal.find_inputs_by_sha256("ab" * 32) == []


def test_reopened_after_close_keeps_everything_committed(tmp_path: Path, db_path: Path) -> None:
    clock = FakeClock()
    journal = Journal.open(db_path, "gpu0", clock)
    input_id = add_input(journal, tmp_path, specs=[(spec_json(), 0), (spec_json("a dog"), 0)])
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.finish_job(job.id, "done")
    journal.close()

    reopened = Journal.open(db_path, "gpu0", clock)
    states = [j.state for j in reopened.jobs_for_input(input_id)]
    assert states == [JobState.DONE, JobState.QUEUED]
    assert [e.kind for e in reopened.events_for_input(input_id)] == ["claiming", "claimed", "started", "done"]


def test_journal_dropped_without_close_keeps_everything_committed(tmp_path: Path, db_path: Path) -> None:
    journal = Journal.open(db_path, "gpu0")
    input_id = add_input(journal, tmp_path)
    running = journal.claim_next_job(lease_seconds=60)
    assert running is not None
    del journal  # no close(): as if the process had died

    survivor = Journal.open(db_path, "gpu1")
    job = survivor.get_job(running.id)
    assert job is not None and job.state == JobState.RUNNING and job.lease_owner == "gpu0"
    restored = survivor.get_input(input_id)
    assert restored is not None and restored.state == InputState.CLAIMED


def _claim_then_hang(db_path: Path, root: Path, committed: multiprocessing.synchronize.Event) -> None:
    journal = Journal.open(db_path, "doomed")
    add_input(journal, root, "kept.txt")
    assert journal.claim_next_job(lease_seconds=60) is not None
    committed.set()
    time.sleep(60)  # wait to be killed


def test_claim_committed_before_kill_9_survives(tmp_path: Path, db_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    committed = context.Event()
    writer = context.Process(target=_claim_then_hang, args=(db_path, tmp_path, committed))
    writer.start()
    try:
        assert committed.wait(30), "the writer never committed"
    finally:
        writer.kill()
        writer.join(10)

    with Journal.open(db_path, "doomed") as journal:
        kept = journal.find_job("kept.txt")
        assert kept is not None and kept.state == JobState.RUNNING
        recovered = journal.recover_stale_jobs(at_startup=True)
        assert [(job.id, job.state, job.crashes) for job in recovered] == [(kept.id, JobState.QUEUED, 1)]


def test_read_only_journal_reads_but_refuses_changes(tmp_path: Path, db_path: Path) -> None:
    with Journal.open(db_path, "gpu0") as writer:
        input_id = add_input(writer, tmp_path)
        reader = Journal.open_read_only(db_path)
        try:
            assert reader.jobs_for_input(input_id)[0].state == JobState.QUEUED
            with pytest.raises(JournalError, match="read-only"):
                reader.claim_next_job(lease_seconds=60)
        finally:
            reader.close()


def test_read_only_open_of_a_missing_journal_says_where_it_looked(db_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Journal.open_read_only(db_path)
    assert str(db_path) in caught.value.message
    assert caught.value.hint


def test_write_blocked_longer_than_busy_timeout_is_a_transient_error(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "BUSY_TIMEOUT_SECONDS", 0.2)
    journal = Journal.open(db_path, "gpu0")
    add_input(journal, tmp_path)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientError) as caught:
            journal.claim_next_job(lease_seconds=60)
        assert "retried" in caught.value.hint
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert journal.claim_next_job(lease_seconds=60) is not None
    journal.close()
