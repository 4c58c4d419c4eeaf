"""Output names are reserved before writing and confirmed after publishing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.journal import Journal, JournalError, OutputNameTaken, OutputState
from tests.test_journal_helpers import add_input, spec_json


@pytest.fixture
def job_ids(tmp_path: Path, journal: Journal) -> tuple[int, int]:
    input_id = add_input(journal, tmp_path, "pair.txt", [(spec_json("a"), 0), (spec_json("b"), 0)])
    first, second = journal.jobs_for_input(input_id)
    return first.id, second.id


def test_planned_name_is_reserved_before_the_file_exists(
    tmp_path: Path, journal: Journal, job_ids: tuple[int, int]
) -> None:
    path = tmp_path / "outbox" / "pair_11_0.png"
    assert not journal.is_path_reserved(path)
    planned = journal.plan_output(job_ids[0], 0, path)
    assert (planned.path, planned.state, planned.sha256) == (path, OutputState.PLANNED, None)
    assert journal.is_path_reserved(path)
    assert not path.exists()


def test_two_jobs_can_never_reserve_the_same_name(
    tmp_path: Path, journal: Journal, job_ids: tuple[int, int]
) -> None:
    path = tmp_path / "outbox" / "pair_11_0.png"
    journal.plan_output(job_ids[0], 0, path)
    with pytest.raises(OutputNameTaken, match="already reserved by image 0 of job") as caught:
        journal.plan_output(job_ids[1], 0, path)
    assert "is_path_reserved" in caught.value.hint


def test_replanning_the_same_image_returns_its_reservation_and_a_new_name_is_refused(
    tmp_path: Path, journal: Journal, job_ids: tuple[int, int]
) -> None:
    path = tmp_path / "outbox" / "pair_11_0.png"
    first = journal.plan_output(job_ids[0], 0, path)
    assert journal.plan_output(job_ids[0], 0, path) == first
    with pytest.raises(OutputNameTaken, match="already reserved"):
        journal.plan_output(job_ids[0], 0, tmp_path / "outbox" / "pair_11_0 (1).png")


def test_completed_outputs_keep_their_hash_and_survive_a_replan(
    tmp_path: Path, journal: Journal, job_ids: tuple[int, int]
) -> None:
    job_id = job_ids[0]
    for index in range(2):
        journal.plan_output(job_id, index, tmp_path / "outbox" / f"pair_{index}.png")
    journal.complete_output(job_id, 0, "ab" * 32)

    outputs = journal.outputs_for(job_id)
    assert [(o.image_index, o.state, o.sha256) for o in outputs] == [
        (0, OutputState.COMPLETE, "ab" * 32),
        (1, OutputState.PLANNED, None),
    ]
    again = journal.plan_output(job_id, 0, tmp_path / "outbox" / "pair_0.png")
    assert again.state == OutputState.COMPLETE, "a re-run after a crash can skip finished images"
    assert journal.outputs_for(job_ids[1]) == []


def test_completing_an_unplanned_output_is_refused(journal: Journal, job_ids: tuple[int, int]) -> None:
    with pytest.raises(JournalError, match="never planned"):
        journal.complete_output(job_ids[0], 3, "cd" * 32)


def test_output_paths_must_be_absolute(journal: Journal, job_ids: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="absolute"):
        journal.plan_output(job_ids[0], 0, Path("outbox/pair.png"))


def test_planned_outputs_lists_unconfirmed_images_of_every_job(
    tmp_path: Path, journal: Journal, job_ids: tuple[int, int]
) -> None:
    for job_id in job_ids:
        journal.plan_output(job_id, 0, tmp_path / "outbox" / f"job{job_id}.png")
    journal.complete_output(job_ids[0], 0, "ef" * 32)
    assert [(o.job_id, o.path.name) for o in journal.planned_outputs()] == [
        (job_ids[1], f"job{job_ids[1]}.png")
    ]
