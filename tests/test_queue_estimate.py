"""How long the queue will take, as `fooocusd status` says it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fooocusd.cli import main
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.journal import Journal
from fooocusd.service.pause import pause_queue, resume_queue
from fooocusd.service.queue_estimate import QueueEstimate, images_per_preset, recent_pace
from fooocusd.settings import Settings
from tests.daemon_harness import Sandbox
from tests.test_journal_helpers import FakeClock, add_input, spec_json


def test_the_pace_is_the_mean_time_between_images_with_idle_gaps_left_out() -> None:
    assert recent_pace([]) is None and recent_pace([1.0, 2.0]) is None
    assert recent_pace([0.0, 2.0, 4.0, 6.0]) == 2.0
    assert recent_pace([0.0, 2.0, 4.0, 5000.0, 5002.0]) == 2.0  # the night between left out
    assert recent_pace([0.0, 0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 8.0]) == pytest.approx(8 / 7)  # batches of 4


def test_images_left_count_each_jobs_images_less_those_already_made(tmp_path: Path, clock: FakeClock) -> None:
    with Journal.open(tmp_path / "journal.sqlite3", "gpu0", clock) as journal:
        add_input(journal, tmp_path, "four.txt", [(spec_json("a", images=4), 0)])
        add_input(journal, tmp_path, "one.txt", [(spec_json("b"), 0)])
        job = journal.claim_next_job(lease_seconds=60)
        assert job is not None
        journal.plan_output(job.id, 0, tmp_path / "a_0.png")
        journal.complete_output(job.id, 0, "ab" * 32)
        assert journal.images_left(1) == 3 + 1
        assert journal.images_left(2) == 3 + 2


def test_a_job_that_does_not_say_how_many_makes_as_many_as_its_preset_says(
    tmp_path: Path, clock: FakeClock
) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "contact-sheet.toml").write_text("images = 6\nsteps = 20\n", encoding="utf-8")
    (presets / "broken.toml").write_text("images = [\n", encoding="utf-8")
    settings = Settings.model_validate({"generation": {"images": 2}})
    images_of = images_per_preset(settings, preset_search_dirs(presets))
    assert images_of("contact-sheet") == 6
    assert images_of(None) == 2 and images_of("realistic") == 2, "the shipped presets leave it to the config"
    assert images_of("broken") == 2 and images_of("gone") == 2

    with Journal.open(tmp_path / "journal.sqlite3", "gpu0", clock) as journal:
        add_input(journal, tmp_path, "sheet.txt", [(spec_json("a", preset="contact-sheet"), 0)])
        add_input(journal, tmp_path, "three.txt", [(spec_json("b", preset="contact-sheet", images=3), 0)])
        add_input(journal, tmp_path, "plain.txt", [(spec_json("c"), 0)])
        assert journal.images_left(images_of) == 6 + 3 + 2


def test_an_estimate_reads_in_plain_words() -> None:
    assert QueueEstimate(120, 7.0).describe() == (
        "about 120 image(s) to make, 14 min at the recent pace of 7.0 s per image"
    )
    assert QueueEstimate(3, None).describe() == "about 3 image(s) to make"
    assert QueueEstimate(2000, 7.0).record() == {
        "images_left": 2000,
        "seconds_per_image": 7.0,
        "seconds_left": 14000.0,
    }


def test_status_says_how_long_the_queue_will_take_at_the_recent_pace(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(sandbox.config)]
    sandbox.drop("first.txt", "a fox\nimages: 4\nsteps: 2\n")
    assert sandbox.drain().ok
    pause_queue(sandbox.state, None)
    sandbox.drop("next.txt", "an owl\nimages: 3\nsteps: 2\n---\na cat\n")
    assert sandbox.drain().left_paused == 2
    assert main(["status", "--json", *config]) == 0
    report = json.loads(capsys.readouterr().out)
    estimate = report["estimate"]
    assert estimate["images_left"] == 4 and estimate["seconds_per_image"] > 0
    assert [job["input"] for job in report["next"]] == ["next.txt", "next.txt #2"]
    assert main(["status", *config]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "queue: about 4 image(s) to make, " in said and " at the recent pace of " in said
    assert "next: next.txt, next.txt #2" in said
    resume_queue(sandbox.state)
    assert sandbox.drain().ok
    assert main(["status", "--json", *config]) == 0
    assert json.loads(capsys.readouterr().out)["estimate"] is None
