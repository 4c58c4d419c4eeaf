"""Reading the journal of a daemon that is starting: ``status`` says so instead of failing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.journal import Journal, JournalNotReady
from fooocusd.service.journal_reader import open_when_ready
from fooocusd.service.state_lock import state_folder_lock
from tests.daemon_harness import Sandbox


def _empty_database(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(db).close()  # what a daemon has made before its tables: schema version 0


def test_a_starting_daemons_journal_is_waited_for_until_it_is_ready(tmp_path: Path) -> None:
    db, state = tmp_path / "journal.sqlite3", tmp_path
    _empty_database(db)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:
            Journal.open(db, owner="test").close()  # the daemon gets there

    with state_folder_lock(state):
        journal = open_when_ready(db, state, patience=3.0, clock=lambda: now[0], sleep=sleep)
    assert journal is not None
    journal.close()
    assert 1.0 <= now[0] < 3.0


def test_a_journal_still_not_ready_after_the_patience_means_the_daemon_is_starting(tmp_path: Path) -> None:
    db, state = tmp_path / "journal.sqlite3", tmp_path
    _empty_database(db)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with state_folder_lock(state):
        assert open_when_ready(db, state, patience=2.0, clock=lambda: now[0], sleep=sleep) is None
    assert now[0] >= 2.0


def test_a_daemon_that_has_not_created_its_journal_yet_is_starting_without_waiting(tmp_path: Path) -> None:
    def never_sleep(_seconds: float) -> None:
        raise AssertionError("it loads its model first, which may take a minute: no waiting")

    with state_folder_lock(tmp_path):
        assert open_when_ready(tmp_path / "journal.sqlite3", tmp_path, sleep=never_sleep) is None


def test_without_a_daemon_a_journal_that_is_not_ready_is_an_error_at_once(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite3"
    _empty_database(db)

    def never_sleep(_seconds: float) -> None:
        raise AssertionError("nothing can make the journal ready: no waiting")

    with pytest.raises(JournalNotReady, match="schema version 0") as raised:
        open_when_ready(db, tmp_path, sleep=never_sleep)
    assert "start the daemon" in (raised.value.hint or "")


@pytest.mark.parametrize("journal_made", [False, True], ids=["no journal file yet", "empty journal"])
def test_status_while_the_daemon_creates_its_journal_says_it_is_starting(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], journal_made: bool
) -> None:
    sandbox.write_config()
    sandbox.state.mkdir(parents=True, exist_ok=True)
    if journal_made:
        _empty_database(sandbox.state / "journal.sqlite3")
    with state_folder_lock(sandbox.state):
        assert main(["status", "--config", str(sandbox.config)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "daemon: starting" in out and "creating or upgrading its journal" in out
        assert "no journal yet" not in out and "not running" not in out
        assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
        report = json.loads(capsys.readouterr().out)
    assert report["daemon"]["running"] and report["daemon"]["starting"]
    assert report["counts"]["queued"] == 0
