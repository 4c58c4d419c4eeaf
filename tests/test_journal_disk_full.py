"""A full disk under the journal: writes are refused whole, and inside the daemon they wait for room.

The disk is "filled" inside SQLite itself: ``PRAGMA max_page_count`` at the journal's present size
makes every write that needs a new page fail with SQLITE_FULL, exactly as a full disk does.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from loguru import logger

from fooocusd.journal import Journal, JournalFull
from fooocusd.journal import journal as journal_module
from fooocusd.service import daemon as daemon_module
from fooocusd.space_wait import SpaceWait
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.test_journal_helpers import add_input


def _fill(journal: Journal) -> int:
    """Cap the file at its present size, then use up the room left in its pages; the events added."""
    added = 0
    with journal._lock:
        pages = journal._conn.execute("PRAGMA page_count").fetchone()[0]
        journal._conn.execute(f"PRAGMA max_page_count = {pages}")
        try:
            while True:
                journal._conn.execute("INSERT INTO events (ts, kind, detail) VALUES (0, 'filler', 'x')")
                added += 1
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)
    return added


def _make_room(journal: Journal) -> None:
    with journal._lock:
        journal._conn.execute("PRAGMA max_page_count = 1073741823")


def _events(journal: Journal) -> int:
    with journal._lock:
        return journal._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_a_write_that_finds_the_disk_full_is_refused_whole_saying_so(
    tmp_path: Path, journal: Journal
) -> None:
    _fill(journal)
    before = _events(journal)
    with pytest.raises(JournalFull) as caught:
        add_input(journal, tmp_path, "fox.txt")
    assert "the disk is full" in caught.value.message and "free some space" in (caught.value.hint or "")
    assert _events(journal) == before and journal.status()["counts"]["claiming"] == 0
    _make_room(journal)
    add_input(journal, tmp_path, "fox.txt")
    assert journal.status()["counts"]["queued"] == 1


def test_with_a_space_wait_a_write_waits_for_room_and_the_log_says_so_once(
    tmp_path: Path, journal: Journal
) -> None:
    _fill(journal)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 4:
            _make_room(journal)

    journal.space_wait = SpaceWait(keep_waiting=lambda _full: True, sleep=sleep)
    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    try:
        add_input(journal, tmp_path, "waits.txt")
    finally:
        logger.remove(sink)
    assert pauses == [1.0, 2.0, 4.0, 8.0]
    assert len(said) == 1 and "the disk is full" in said[0] and "the daemon waits and carries on" in said[0]
    assert journal.status()["counts"]["queued"] == 1


def test_a_space_wait_that_is_told_to_stop_gives_up_with_the_error(tmp_path: Path, journal: Journal) -> None:
    _fill(journal)
    journal.space_wait = SpaceWait(keep_waiting=lambda _full: False, sleep=lambda _seconds: None)
    with pytest.raises(JournalFull):
        add_input(journal, tmp_path, "gives-up.txt")


def test_the_daemon_waits_out_a_full_disk_and_then_runs_every_file_once(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Journal] = []
    real_open = Journal.open

    def recording_open(db_path: Path, owner: str, *args: object) -> Journal:
        journal = real_open(db_path, owner, *args)  # type: ignore[arg-type]
        opened.append(journal)
        return journal

    monkeypatch.setattr(Journal, "open", staticmethod(recording_open))
    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    try:
        with RunningDaemon(sandbox.settings()) as running:
            wait_for(lambda: any(line.startswith("ready: ") for line in said), what="the daemon ready")
            [journal] = opened
            _fill(journal)
            for number in range(6):
                sandbox.drop(f"fox{number}.txt", f"fox number {number}\nsteps: 2\n")
            wait_for(
                lambda: any("the disk is full" in line for line in said), what="the full disk to be said"
            )
            time.sleep(1.0)
            assert running.error is None
            assert len(sandbox.files(sandbox.inbox)) == 6, "the files wait in the inbox, untouched"
            _make_room(journal)
            wait_for(lambda: len(sandbox.files(sandbox.done)) == 6, what="every file done")
            assert running.error is None
    finally:
        logger.remove(sink)
    assert len(sandbox.images()) == 6 and sandbox.files(sandbox.failed) == []
    assert sandbox.journal_rows("SELECT COUNT(*), COUNT(DISTINCT relpath) FROM inputs") == [(6, 6)]


def test_status_reads_a_journal_whose_disk_is_too_full_to_open_it_the_usual_way(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_input(journal, tmp_path, "fox.txt")
    journal.close()  # no daemon holds it: SQLite would have to create its shared-memory file
    real_version = journal_module.schema_version
    refusals: list[str] = []

    def version_on_a_full_disk(conn: sqlite3.Connection) -> int:
        if not refusals:  # the usual open needs room for the shared-memory file
            refusals.append("disk I/O error")
            raise sqlite3.OperationalError("disk I/O error")
        return real_version(conn)

    monkeypatch.setattr(journal_module, "schema_version", version_on_a_full_disk)
    monkeypatch.setattr(journal_module, "no_room_to_open", lambda _db: True)
    with Journal.open_read_only(journal.db_path) as reader:
        assert reader.status()["counts"]["queued"] == 1
    assert refusals == ["disk I/O error"]


def test_a_journal_that_cannot_be_opened_on_a_full_disk_says_so_and_not_that_it_is_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "state" / "journal.sqlite3"
    monkeypatch.setattr(journal_module, "no_room_to_open", lambda _db: True)
    error = journal_module._cannot_open(db_path, sqlite3.OperationalError("disk I/O error"))
    assert "the disk that holds it is full (disk I/O error)" in error.message
    assert f"df -h {db_path.parent}" in error.hint and "nothing in it is lost" in error.hint
    assert "move it aside" not in error.hint


def test_the_daemon_waits_to_open_its_journal_until_the_disk_has_room(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    attempts: list[float] = []
    real_open = Journal.open

    def open_on_a_disk_that_fills_then_frees(db_path: Path, owner: str, *args: object) -> Journal:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise journal_module._cannot_open(db_path, sqlite3.OperationalError("disk I/O error"))
        return real_open(db_path, owner, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "open", staticmethod(open_on_a_disk_that_fills_then_frees))
    monkeypatch.setattr(daemon_module, "no_room_to_open", lambda _db: len(attempts) <= 2)
    sandbox.drop("fox.txt", "a fox\nsteps: 2\n")

    summary = sandbox.drain()

    assert len(attempts) == 3 and attempts[2] - attempts[0] >= 3.0  # waited 1 s, then 2 s
    assert summary.jobs_done == 1
    full = [line for line in logged if "the disk is full" in line]
    assert len(full) == 1 and "the daemon waits and carries on by itself" in full[0]
