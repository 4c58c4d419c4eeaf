"""``fooocusd submit --wait``: a script submits a job and gets its images' paths, or why there are none."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.errors import ConfigError
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import Folders
from fooocusd.service.pause import pause_queue
from fooocusd.service.state_lock import daemon_holding
from fooocusd.service.submit_wait import DAEMON_GONE_SECONDS, follow, look_up
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.test_journal_helpers import add_input, spec_json


def _folders(sandbox: Sandbox) -> Folders:
    return Folders.from_paths(sandbox.settings().paths.resolved())


def _submit(sandbox: Sandbox, *args: str) -> int:
    wait_for(lambda: daemon_holding(sandbox.state) is not None, what="the daemon to hold the state folder")
    return main(["submit", "--config", str(sandbox.config), "--wait", "--timeout", "120", *args])


def test_waiting_prints_the_path_of_each_image_alone_on_stdout(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "owls.txt"
    job.write_text("two owls\nimages: 2\nseed: 3\n", encoding="utf-8")
    with RunningDaemon(sandbox.settings()):
        assert _submit(sandbox, str(job)) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(sandbox.outbox / "owls_3_0.png"), str(sandbox.outbox / "owls_4_1.png")]
    assert all(
        Path(line).is_file() and Path(line).with_suffix(".json").is_file() for line in out.splitlines()
    )
    assert "submitted" in err and "waiting for the daemon to render owls.txt" in err


def test_a_job_that_fails_exits_1_naming_its_error_and_report(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunningDaemon(sandbox.settings()):
        assert _submit(sandbox, "--prompt", "an owl <lora:missing-feathers>") == 1
    out, err = capsys.readouterr()
    err = " ".join(err.split())
    assert out == ""
    assert "failed: LoRA 'missing-feathers' was not found" in err
    [report] = sandbox.failed.glob("*.error.txt")
    assert f"the report: {report}" in err


def test_with_json_the_outcome_is_one_object_on_stdout(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunningDaemon(sandbox.settings()):
        assert _submit(sandbox, "--json", "--prompt", "an owl", "--set", "seed=9") == 0
        assert _submit(sandbox, "--json", "--prompt", "an owl <lora:missing-feathers>") == 1
    done, failed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [image] = done["images"]
    assert (done["ending"], done["exit_code"], done["problems"], done["report"]) == ("done", 0, [], None)
    assert Path(image).is_file() and done["sidecars"] == [str(Path(image).with_suffix(".json"))]
    assert (failed["ending"], failed["exit_code"], failed["images"]) == ("failed", 1, [])
    assert "LoRA 'missing-feathers' was not found" in failed["problems"][0]
    assert Path(failed["report"]).is_file() and failed["input"].startswith("an-owl-lora-missing-feathers-")


def test_without_a_running_daemon_waiting_is_refused_and_nothing_is_submitted(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.write_config()
    assert main(["submit", "--config", str(sandbox.config), "--wait", "--prompt", "an owl"]) == 2
    assert "no daemon is running on the state folder" in " ".join(capsys.readouterr().err.split())
    assert list(sandbox.inbox.iterdir()) == []


def test_a_file_refused_at_intake_or_skipped_as_a_duplicate_ends_the_wait_saying_so(sandbox: Sandbox) -> None:
    sandbox.write_config()
    folders = _folders(sandbox)
    since = time.time()
    assert look_up("cat.txt", since, folders).progress == "waiting for the daemon to take it in"  # no journal
    with Journal.open(folders.journal_db, owner="test") as journal:
        journal.record_refusal(
            "old.txt", "old.txt: refused before", [("old.txt", folders.failed / "old.txt")]
        )
        time.sleep(0.01)
        since = time.time()
        journal.record_refusal(
            "cat.txt", "cat.txt: a conflict copy", [("cat.txt", folders.failed / "cat.txt")]
        )
        journal.log_event("duplicate-skipped", "dog.txt")
    refused = look_up("cat.txt", since, folders)
    assert refused is not None and refused.ending == "refused"
    assert refused.problems == ["cat.txt: a conflict copy"]
    assert refused.report == folders.failed / "cat.txt.error.txt"
    assert look_up("old.txt", since, folders).ending == "waiting"  # refused before this submission
    skipped = look_up("dog.txt", since, folders)
    assert skipped is not None and skipped.ending == "skipped"
    assert 'intake.duplicates = "skip"' in skipped.problems[0]


def test_waiting_stops_at_the_timeout_or_when_the_daemon_has_been_gone_a_while(sandbox: Sandbox) -> None:
    sandbox.write_config()
    folders = _folders(sandbox)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with RunningDaemon(sandbox.settings()):
        timed_out = follow("late.txt", time.time(), folders, timeout=3.0, clock=lambda: now[0], sleep=sleep)
    assert timed_out.ending == "timed out" and now[0] >= 3.0
    assert "late.txt is still queued or rendering" in timed_out.problems[0]
    now[0] = 0.0
    gone = follow("late.txt", time.time(), folders, timeout=None, clock=lambda: now[0], sleep=sleep)
    assert gone.ending == "daemon stopped" and now[0] >= DAEMON_GONE_SECONDS
    assert "late.txt runs when it starts again" in gone.problems[0]


def test_while_waiting_each_look_says_where_the_file_is(sandbox: Sandbox) -> None:
    sandbox.write_config()
    folders = _folders(sandbox)
    since = time.time()
    with Journal.open(folders.journal_db, owner="test") as journal:
        input_id = add_input(journal, sandbox.root, "owls.txt", [(spec_json(), 0), (spec_json(), 0)])
        assert look_up("owls.txt", since, folders).progress == "queued"
        job = journal.claim_next_job(lease_seconds=60)
        assert job is not None and job.input_id == input_id
        assert look_up("owls.txt", since, folders).progress == "job 1 of 2: starting"
        journal.heartbeat(job.id, 5, 30, lease_seconds=60)
        assert look_up("owls.txt", since, folders).progress == "job 1 of 2: step 5/30"
        journal.finish_job(job.id, "done")
        [other] = [row for row in journal.jobs_for_input(input_id) if row.id != job.id]
        assert journal.cancel_job(other.id)
        assert look_up("owls.txt", since, folders).progress == "finishing"  # files not moved yet
    seen: list[str] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    follow(
        "owls.txt", since, folders, timeout=1.0, clock=lambda: now[0], sleep=sleep, on_progress=seen.append
    )
    assert seen and set(seen) == {"finishing"}
    with Journal.open(folders.journal_db, owner="test") as journal:
        [claimed] = journal.files_for_input(input_id)
        journal.begin_finish(input_id, folders.done, {claimed.claimed_path: folders.done / "owls.txt"})
        journal.complete_finish(input_id)
    ended = look_up("owls.txt", since, folders)
    assert (ended.ending, ended.problems) == (
        "failed",
        [f"job {other.id} cancelled (`fooocusd retry {other.id}` runs it again)"],
    )


def test_a_journal_the_daemon_is_still_creating_is_waited_for_and_one_that_stays_unreadable_is_said(
    sandbox: Sandbox,
) -> None:
    # The daemon takes the state folder before its journal has its tables: --wait must not fail then.
    sandbox.write_config()
    folders = _folders(sandbox)
    folders.journal_db.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(folders.journal_db).close()  # an empty database, schema version 0
    with pytest.raises(ConfigError):
        look_up("owl.txt", time.time(), folders)
    now = [0.0]

    def sleep_then_create(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:
            Journal.open(folders.journal_db, owner="test").close()  # the daemon gets there

    waited = follow(
        "owl.txt", time.time(), folders, timeout=3.0, clock=lambda: now[0], sleep=sleep_then_create
    )
    assert waited.ending == "timed out"

    folders.journal_db.unlink()
    sqlite3.connect(folders.journal_db).close()
    now[0] = 0.0

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ConfigError, match="schema version 0"):
        follow("owl.txt", time.time(), folders, timeout=None, clock=lambda: now[0], sleep=sleep)
    assert now[0] >= DAEMON_GONE_SECONDS


def test_waiting_on_a_paused_queue_says_it_is_paused_and_how_to_resume(sandbox: Sandbox) -> None:
    sandbox.write_config()
    folders = _folders(sandbox)
    since = time.time()
    with Journal.open(folders.journal_db, owner="test") as journal:
        add_input(journal, sandbox.root, "owls.txt")
    pause_queue(folders.state, None)
    seen: list[str] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with RunningDaemon(sandbox.settings()):
        timed_out = follow(
            "owls.txt",
            since,
            folders,
            timeout=1.0,
            clock=lambda: now[0],
            sleep=sleep,
            on_progress=seen.append,
        )
    assert seen and all(text.startswith("queued; the queue is paused since ") for text in seen)
    assert timed_out.problems[0].startswith("owls.txt is queued, and the queue is paused since ")
    assert timed_out.problems[0].endswith("(`fooocusd resume`)")
