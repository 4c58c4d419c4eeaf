"""`fooocusd retry` of what lies in failed/: a file refused at intake goes back into the inbox
under its own name, and so does a failed job's file the user fixed there."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from fooocusd.cli import main
from fooocusd.journal import SCHEMA_VERSION, Journal
from fooocusd.journal.schema import MIGRATIONS
from tests.daemon_harness import Sandbox

BAD_TOML = 'prompt = "a lighthouse at dusk"\nimagse = 2\n'
GOOD_TOML = 'prompt = "a lighthouse at dusk"\nseed = 5\n'


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def _retry(sandbox: Sandbox, ref: str) -> int:
    return main(["retry", ref, "--config", str(sandbox.config)])


def test_retry_puts_a_fixed_refused_file_back_in_the_inbox_with_its_picture_and_it_runs(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("coast/lighthouse.toml", BAD_TOML)
    sandbox.drop("coast/lighthouse.png", _png())
    assert not sandbox.drain().ok
    failed = sandbox.failed / "coast"
    assert sorted(p.name for p in failed.iterdir()) == [
        "lighthouse.png",
        "lighthouse.toml",
        "lighthouse.toml.error.txt",
    ]
    assert "fooocusd retry lighthouse.toml" in (failed / "lighthouse.toml.error.txt").read_text()

    capsys.readouterr()
    assert main(["status", "--config", str(sandbox.config)]) == 0
    assert "1 file(s) still in failed/" in " ".join(capsys.readouterr().out.split())

    (failed / "lighthouse.toml").write_text(GOOD_TOML)  # fixed where it lies, as the error file says
    assert _retry(sandbox, "lighthouse.toml") == 0
    assert "back in the inbox" in capsys.readouterr().out
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    assert json.loads(capsys.readouterr().out)["refused_files"] == {"in_failed": 0, "returned": 1}
    assert list(failed.iterdir()) == []
    assert (sandbox.inbox / "coast" / "lighthouse.toml").read_text() == GOOD_TOML
    assert (sandbox.inbox / "coast" / "lighthouse.png").read_bytes() == _png()

    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 1
    assert [p.name for p in sandbox.files(sandbox.done / "coast")] == ["lighthouse.png", "lighthouse.toml"]
    assert len(sandbox.images()) == 1


def test_retry_of_a_second_refusal_by_its_name_in_failed_restores_the_name_it_came_with(
    sandbox: Sandbox,
) -> None:
    for _ in range(2):
        sandbox.drop("lighthouse.toml", BAD_TOML)
        assert not sandbox.drain().ok
    assert (sandbox.failed / "lighthouse-1.toml").exists()

    (sandbox.failed / "lighthouse-1.toml").write_text(GOOD_TOML)
    assert _retry(sandbox, "lighthouse-1.toml") == 0
    assert (sandbox.inbox / "lighthouse.toml").read_text() == GOOD_TOML
    assert not (sandbox.failed / "lighthouse-1.toml.error.txt").exists()
    assert (sandbox.failed / "lighthouse.toml").read_text() == BAD_TOML, "the older refusal stays"
    assert sandbox.drain().jobs_done == 1


def test_retry_refuses_to_overwrite_a_file_of_the_same_name_in_the_inbox_and_moves_nothing(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("lighthouse.toml", BAD_TOML)
    assert not sandbox.drain().ok
    sandbox.drop("lighthouse.toml", "a newer job the user dropped meanwhile")

    assert _retry(sandbox, "lighthouse.toml") == 2
    assert "the inbox already holds" in capsys.readouterr().err
    assert (sandbox.failed / "lighthouse.toml").read_text() == BAD_TOML
    assert (sandbox.failed / "lighthouse.toml.error.txt").exists()
    assert (sandbox.inbox / "lighthouse.toml").read_text() == "a newer job the user dropped meanwhile"


def test_retry_of_a_name_whose_last_drop_was_refused_returns_that_file_not_the_older_job(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("lighthouse.toml", GOOD_TOML)
    assert sandbox.drain().ok
    sandbox.drop("lighthouse.toml", BAD_TOML)
    assert not sandbox.drain().ok

    assert _retry(sandbox, "lighthouse.toml") == 0
    assert (sandbox.inbox / "lighthouse.toml").read_text() == BAD_TOML
    assert sandbox.journal_rows("SELECT state FROM jobs") == [("done",)], "the old job was not reopened"


def test_retry_of_a_refusal_already_returned_or_moved_away_says_so(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("lighthouse.toml", BAD_TOML)
    assert not sandbox.drain().ok
    (sandbox.failed / "lighthouse.toml").rename(sandbox.inbox / "lighthouse.toml")  # by hand

    assert _retry(sandbox, "lighthouse.toml") == 2
    assert "no longer in the failed folder" in capsys.readouterr().err


def test_a_journal_from_before_refusals_were_recorded_is_brought_up_to_date(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    raw = sqlite3.connect(db_path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in migration:
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 2")
    raw.execute("INSERT INTO events (ts, kind, detail) VALUES (1.0, 'refused', 'old.txt: bad')")
    raw.close()

    with Journal.open(db_path, "gpu0") as journal:
        assert journal.pragmas()["user_version"] == SCHEMA_VERSION
        assert [event.detail for event in journal.recent_events("refused")] == ["old.txt: bad"]
        journal.record_refusal("new.txt", "new.txt: bad", [("new.txt", tmp_path / "failed" / "new.txt")])
        refusal = journal.find_refusal("new")
        assert refusal is not None and refusal.files == (("new.txt", tmp_path / "failed" / "new.txt"),)


def test_retry_of_a_file_in_failed_with_no_record_of_its_origin_says_to_move_it_by_hand(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("lighthouse.toml", BAD_TOML)
    assert not sandbox.drain().ok
    with sqlite3.connect(sandbox.state / "journal.sqlite3") as raw:  # as an older fooocusd left it
        raw.execute("DELETE FROM refusals")

    assert _retry(sandbox, "lighthouse.toml") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has no record of where it came from" in err and "back into the inbox yourself" in err
    assert (sandbox.failed / "lighthouse.toml").exists()


def test_retry_of_a_failed_job_whose_file_was_fixed_in_failed_reads_the_fixed_file(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("dog.txt", "a dog\nmodel: not-downloaded-yet\n")  # fails only when the job runs
    assert sandbox.drain().jobs_failed == 1
    (sandbox.failed / "dog.txt").write_text("a dog\nseed: 3\n")

    assert _retry(sandbox, "dog.txt") == 0
    assert "changed in the failed folder" in " ".join(capsys.readouterr().out.split())
    assert (sandbox.inbox / "dog.txt").read_text() == "a dog\nseed: 3\n"
    assert not (sandbox.failed / "dog.txt.error.txt").exists()
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 1, "the fixed file ran, not the old job's settings"
    assert sandbox.journal_rows("SELECT state FROM jobs ORDER BY id") == [("failed",), ("done",)]


def test_retry_of_a_failed_job_whose_files_were_taken_out_of_failed_says_so_and_queues_nothing(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("dog.txt", "a dog\nmodel: not-downloaded-yet\n")
    assert sandbox.drain().jobs_failed == 1
    (sandbox.failed / "dog.txt").unlink()

    assert _retry(sandbox, "dog.txt") == 2
    assert "no longer in" in " ".join(capsys.readouterr().err.split())
    assert sandbox.journal_rows("SELECT state FROM jobs") == [("failed",)]


def test_retry_of_a_job_id_means_that_job_even_when_a_newer_refused_file_starts_with_those_digits(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("dog.txt", "a dog\nmodel: not-downloaded-yet\n")
    assert sandbox.drain().jobs_failed == 1
    [(job_id,)] = sandbox.journal_rows("SELECT id FROM jobs")
    sandbox.drop(f"{job_id}-lighthouse.toml", BAD_TOML)
    assert not sandbox.drain().ok

    assert _retry(sandbox, str(job_id)) == 0
    assert (sandbox.failed / f"{job_id}-lighthouse.toml").exists(), "the refused file stayed"
    assert sandbox.journal_rows("SELECT state FROM jobs") == [("queued",)]
