"""The journal forgets what finished long ago (``journal.keep_days``), a batch at a time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from loguru import logger

from fooocusd.journal import Journal
from fooocusd.service.journal_upkeep import ROUND_EVERY_SECONDS, SECONDS_PER_DAY, JournalUpkeep
from tests.daemon_harness import Sandbox
from tests.test_journal_helpers import FakeClock, add_input

DAY = SECONDS_PER_DAY


def _done(journal: Journal, root: Path, name: str) -> int:
    """An input whose one job made one image and whose file went to done/."""
    input_id = add_input(journal, root, name)
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None
    journal.plan_output(job.id, 0, root / "outbox" / f"{name}.png")
    journal.complete_output(job.id, 0, "ab" * 32)
    journal.finish_job(job.id, "done", None)
    found = journal.get_input(input_id)
    assert found is not None
    targets = {file.claimed_path: root / "done" / file.source_path.name for file in found.files}
    journal.begin_finish(input_id, root / "done", targets)
    journal.complete_finish(input_id)
    return input_id


def _counts(journal: Journal) -> dict[str, int]:
    conn = sqlite3.connect(journal.db_path)
    try:
        tables = ("inputs", "input_files", "jobs", "outputs", "events", "refusals")
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}
    finally:
        conn.close()


def _forget_all(journal: Journal, cutoff: float, batch: int = 500) -> int:
    total = 0
    while deleted := journal.forget_before(cutoff, batch=batch):
        total += deleted
    return total


def test_inputs_finished_before_the_cutoff_are_forgotten_with_their_jobs_outputs_and_events(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    old = _done(journal, tmp_path, "old.txt")
    clock.advance(100 * DAY)
    recent = _done(journal, tmp_path, "recent.txt")
    before = _counts(journal)
    assert _forget_all(journal, clock.now - 90 * DAY) > 0
    assert journal.get_input(old) is None and journal.get_input(recent) is not None
    after = _counts(journal)
    assert {table: before[table] - after[table] for table in after} == {
        "inputs": 1,
        "input_files": 1,
        "jobs": 1,
        "outputs": 1,
        "events": before["events"] // 2,
        "refusals": 0,
    }
    assert [job.state for job in journal.jobs_for_input(recent)] == ["done"]


def test_inputs_still_queued_or_running_are_never_forgotten_however_old(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    finished = _done(journal, tmp_path, "finished.txt")
    running = add_input(journal, tmp_path, "running.txt")
    assert journal.claim_next_job(lease_seconds=10 * 365 * DAY) is not None
    waiting = add_input(journal, tmp_path, "waiting.txt")
    add_input(journal, tmp_path, "newest.txt")
    clock.advance(400 * DAY)
    _forget_all(journal, clock.now - DAY)
    assert journal.get_input(finished) is None
    assert journal.get_input(waiting) is not None and journal.get_input(running) is not None
    assert [job.state for job in journal.jobs_for_input(running)] == ["running"]


def test_the_newest_input_is_kept_so_that_job_ids_are_never_handed_out_twice(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    _done(journal, tmp_path, "first.txt")
    last = _done(journal, tmp_path, "second.txt")
    [last_job] = journal.jobs_for_input(last)
    clock.advance(400 * DAY)
    _forget_all(journal, clock.now - DAY)
    assert journal.get_input(last) is not None
    add_input(journal, tmp_path, "third.txt")
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None and job.id > last_job.id


def test_refusals_made_before_the_cutoff_are_forgotten(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    journal.record_refusal("old.exe", "not a job", [("old.exe", tmp_path / "failed" / "old.exe")])
    clock.advance(100 * DAY)
    journal.record_refusal("new.exe", "not a job", [("new.exe", tmp_path / "failed" / "new.exe")])
    _forget_all(journal, clock.now - 90 * DAY)
    assert journal.find_refusal("old.exe") is None and journal.find_refusal("new.exe") is not None


def test_forgetting_goes_a_batch_at_a_time_until_nothing_older_is_left(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    for number in range(7):
        _done(journal, tmp_path, f"{number}.txt")
    clock.advance(100 * DAY)
    _done(journal, tmp_path, "newest.txt")
    cutoff = clock.now - 90 * DAY
    rounds = []
    while deleted := journal.forget_before(cutoff, batch=3):
        rounds.append(deleted)
    assert len(rounds) >= 3 and all(deleted <= 3 * 3 for deleted in rounds)
    assert _counts(journal)["inputs"] == 1


class _Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_upkeep_forgets_at_its_first_tick_then_once_an_hour_and_says_what_it_forgot(
    tmp_path: Path, journal: Journal, clock: FakeClock
) -> None:
    old = _done(journal, tmp_path, "old.txt")
    clock.advance(100 * DAY)
    _done(journal, tmp_path, "recent.txt")
    ticks = _Ticks()
    upkeep = JournalUpkeep(journal, clock=clock, monotonic=ticks)
    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    try:
        upkeep.tick(keep_days=0)  # 0 keeps everything
        assert journal.get_input(old) is not None
        upkeep.tick(keep_days=90)
        assert journal.get_input(old) is None
        older = _done(journal, tmp_path, "later.txt")
        clock.advance(100 * DAY)
        _done(journal, tmp_path, "latest.txt")
        ticks.now += ROUND_EVERY_SECONDS / 2
        upkeep.tick(keep_days=90)
        assert journal.get_input(older) is not None, "a round runs once an hour"
        ticks.now += ROUND_EVERY_SECONDS
        upkeep.tick(keep_days=90)
        assert journal.get_input(older) is None
    finally:
        logger.remove(sink)
    assert len(said) == 2 and "(journal.keep_days = 90)" in said[0]
    assert said[0].startswith("journal: forgot ") and "records of files finished before " in said[0]


def test_the_daemon_forgets_files_finished_longer_ago_than_keep_days(sandbox: Sandbox) -> None:
    sandbox.write_config("[journal]\nkeep_days = 30\n")
    sandbox.drop("old.txt", "an old fox\nsteps: 2\n")
    sandbox.drop("older.txt", "an older fox\nsteps: 2\n")
    assert sandbox.drain().ok
    conn = sqlite3.connect(sandbox.state / "journal.sqlite3")
    with conn:
        conn.execute("UPDATE inputs SET updated = updated - 31 * 86400, created = created - 31 * 86400")
        conn.execute("UPDATE events SET ts = ts - 31 * 86400")
    conn.close()
    [[newest]] = sandbox.journal_rows("SELECT relpath FROM inputs ORDER BY id DESC LIMIT 1")
    sandbox.drop("new.txt", "a new fox\nsteps: 2\n")
    assert sandbox.drain().ok  # it forgets as it starts, before new.txt is taken
    assert sorted(row[0] for row in sandbox.journal_rows("SELECT relpath FROM inputs")) == sorted(
        [newest, "new.txt"]
    )
    assert len(sandbox.images()) == 3 and len(sandbox.files(sandbox.done)) == 3  # files stay
