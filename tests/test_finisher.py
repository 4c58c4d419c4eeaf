"""Where a claimed input goes once all its jobs have ended."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.journal import JobState, Journal
from fooocusd.service.finisher import Finisher
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings
from tests.daemon_harness import Sandbox
from tests.mounts_faked import FakeMount
from tests.test_journal_helpers import FakeClock, add_input, spec_json


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.sqlite3", "gpu0") as opened:
        yield opened


def _finisher(
    tmp_path: Path, journal: Journal, after_success: str, clock: FakeClock | None = None
) -> Finisher:
    settings = Settings.model_validate(
        {
            "paths": {
                "inbox": tmp_path / "inbox",
                "outbox": tmp_path / "outbox",
                "state": tmp_path / "state",
            },
            "outbox": {"after_success": after_success},
        }
    )
    folders = Folders.from_paths(settings.paths.resolved())
    return Finisher(settings, folders, journal, clock) if clock else Finisher(settings, folders, journal)


def _claimed(tmp_path: Path, journal: Journal, name: str, jobs: int) -> tuple[int, Path]:
    input_id = add_input(journal, tmp_path, name, [(spec_json(f"p{n}"), 0) for n in range(jobs)])
    found = journal.get_input(input_id)
    assert found is not None
    [file] = found.files
    file.claimed_path.parent.mkdir(parents=True, exist_ok=True)
    file.claimed_path.write_text("a cat\n")
    return input_id, file.claimed_path


def _run_one(journal: Journal) -> None:
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None and journal.finish_job(job.id, "done", None)


def test_an_input_with_a_cancelled_job_is_moved_to_done_even_when_success_deletes_inputs(
    tmp_path: Path, journal: Journal
) -> None:
    input_id, claimed = _claimed(tmp_path, journal, "two.txt", jobs=2)
    _run_one(journal)
    [pending] = [job for job in journal.jobs_for_input(input_id) if job.state == JobState.QUEUED]
    journal.cancel_job(pending.id)

    assert _finisher(tmp_path, journal, "delete").finish_ready() == 1
    assert not claimed.exists()
    assert (tmp_path / "done" / "two.txt").read_text() == "a cat\n"
    journal.retry_job(pending.id)  # the input is there to come back


def test_an_input_whose_jobs_all_succeeded_is_deleted_when_success_deletes_inputs(
    tmp_path: Path, journal: Journal
) -> None:
    _, claimed = _claimed(tmp_path, journal, "one.txt", jobs=1)
    _run_one(journal)

    assert _finisher(tmp_path, journal, "delete").finish_ready() == 1
    assert not claimed.exists()
    assert not (tmp_path / "done").exists() or list((tmp_path / "done").iterdir()) == []


def test_an_input_that_cannot_be_moved_stays_says_why_once_and_moves_when_it_can(
    tmp_path: Path, journal: Journal, logged: list[str]
) -> None:
    clock = FakeClock()
    finisher = _finisher(tmp_path, journal, "move", clock)
    _, claimed = _claimed(tmp_path, journal, "fox.txt", jobs=1)
    _run_one(journal)
    blocker = tmp_path / "done"
    blocker.write_text("a file where done/ should be\n")  # done/ cannot be made: as a lost mount

    assert finisher.finish_ready() == 0
    assert claimed.exists() and finisher.unmoved == 1 and not finisher.pending()
    [error] = logged
    assert f"could not move fox.txt out of {claimed.parent}" in error
    assert "tried again by itself (first in 5 s" in error and str(blocker) in error
    clock.advance(4)
    assert finisher.finish_ready() == 0 and len(logged) == 1, "not due yet"
    clock.advance(1)
    assert finisher.finish_ready() == 0 and len(logged) == 1, "the same reason is not logged again"

    blocker.unlink()
    clock.advance(10)  # the second wait is twice the first
    assert finisher.finish_ready() == 1
    assert not claimed.exists() and (blocker / "fox.txt").read_text() == "a cat\n"
    assert finisher.unmoved == 0
    assert "fox.txt could be moved after all, 15 s after the first try" in logged[-1]


def test_a_move_that_failed_after_its_target_was_recorded_completes_under_that_name(
    tmp_path: Path, journal: Journal
) -> None:
    clock = FakeClock()
    finisher = _finisher(tmp_path, journal, "move", clock)
    input_id, claimed = _claimed(tmp_path, journal, "fox.txt", jobs=1)
    _run_one(journal)
    target = tmp_path / "done" / "evening" / "fox.txt"
    target.parent.parent.mkdir()
    target.parent.write_text("not a folder\n")
    journal.begin_finish(input_id, target.parent, {claimed: target})

    assert finisher.finish_ready() == 0 and claimed.exists() and finisher.unmoved == 1
    target.parent.unlink()
    target.parent.mkdir()
    clock.advance(5)
    assert finisher.finish_ready() == 1
    assert target.read_text() == "a cat\n" and not claimed.exists()
    found = journal.get_input(input_id)
    assert found is not None and found.state == "finished"


def test_once_reports_an_input_it_could_not_move_and_the_next_run_moves_it(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("portrait/fox.txt", "a fox\nsteps: 2\n")
    sandbox.done.mkdir(parents=True)
    blocker = sandbox.done / "portrait"
    blocker.write_text("a file where the subfolder should be\n")

    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_unmoved, summary.ok) == (1, 1, False)
    assert [p.name for p in sandbox.files(sandbox.state / "processing")] == ["fox.txt"]
    assert main(["status", "--config", str(sandbox.config)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "processing: 1 input(s) whose jobs have ended wait to be moved to done/ or failed/" in said

    blocker.unlink()
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_unmoved, summary.ok) == (0, 0, True)
    assert (sandbox.done / "portrait" / "fox.txt").is_file()
    assert sandbox.files(sandbox.state / "processing") == []
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    assert json.loads(capsys.readouterr().out)["inputs_to_move"] == 0


def test_an_unmoved_input_whose_job_is_retried_meanwhile_is_no_longer_counted_as_unmoved(
    tmp_path: Path, journal: Journal
) -> None:
    finisher = _finisher(tmp_path, journal, "move", FakeClock())
    _claimed(tmp_path, journal, "fox.txt", jobs=1)
    job = journal.claim_next_job(lease_seconds=60)
    assert job is not None and journal.finish_job(job.id, "failed", "the model was missing")
    (tmp_path / "failed").write_text("a file where failed/ should be\n")
    assert finisher.finish_ready() == 0 and finisher.unmoved == 1

    journal.retry_job(job.id)  # `fooocusd retry`: the job runs again, the input stays claimed
    assert finisher.finish_ready() == 0 and finisher.unmoved == 0


def test_done_unmounted_with_its_share_keeps_the_input_instead_of_filling_the_bare_mount_point(
    tmp_path: Path, journal: Journal, logged: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    nas = tmp_path / "nas"
    done = nas / "done"
    done.mkdir(parents=True)
    share = FakeMount(monkeypatch, nas)
    paths = {
        "inbox": tmp_path / "inbox",
        "outbox": tmp_path / "outbox",
        "state": tmp_path / "state",
        "done": done,
    }
    settings = Settings.model_validate({"paths": paths})
    finisher = Finisher(settings, Folders.from_paths(settings.paths.resolved()), journal, clock)
    _, claimed = _claimed(tmp_path, journal, "fox.txt", jobs=1)
    _run_one(journal)
    done.rmdir()  # the share is unmounted, and done/ with it
    share.unmount()

    assert finisher.finish_ready() == 0
    assert claimed.exists() and not done.exists(), "done/ was made again on the bare mount point"
    assert any(f"{done} is on {nas}, which is no longer mounted" in line for line in logged)

    share.mount()
    done.mkdir()
    clock.advance(5)
    assert finisher.finish_ready() == 1
    assert (done / "fox.txt").read_text() == "a cat\n"
