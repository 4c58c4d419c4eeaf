"""The worker's handling of engine outcomes, with a scripted engine (a unit test of one layer)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.engine.styles import load_styles
from fooocusd.errors import Interrupted, InvalidInput, OutOfMemory, TransientError
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import Folders
from fooocusd.service.worker import Worker
from tests.daemon_harness import Sandbox


class ScriptedEngine:
    """Raises the scripted errors in turn, then renders a flat image."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.freed = 0
        self.requests: list[GenerationRequest] = []

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, progress=None, should_stop=None) -> GeneratedImage:  # type: ignore[no-untyped-def]
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        if progress is not None:
            for step in range(1, request.steps + 1):
                progress(step, request.steps)
        return GeneratedImage(
            image=Image.new("RGB", (64, 48), "gray"),
            width=64,
            height=48,
            model_name="scripted",
            model_path="",
            model_sha256="",
            device="cpu",
            dtype="float32",
            timings={"total": 0.01},
        )

    def free_memory(self) -> None:
        self.freed += 1

    def describe(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def setup(sandbox: Sandbox):  # type: ignore[no-untyped-def]
    settings = sandbox.settings()
    folders = Folders.from_paths(settings.paths.resolved())
    folders.state.mkdir(parents=True)
    journal = Journal.open(folders.journal_db, owner="test")
    yield settings, folders, journal
    journal.close()


def _queue(journal: Journal, spec: JobSpec) -> int:
    input_id = journal.begin_claim(
        key="k",
        relpath="job.txt",
        sha256="0" * 64,
        size=1,
        files=[("spec", Path("/inbox/job.txt"), Path("/state/processing/k/job.txt"))],
        specs=[(spec.model_dump_json(exclude_unset=True), 0)],
    )
    journal.complete_claim(input_id)
    return journal.jobs_for_input(input_id)[0].id


def _worker(setup, engine: ScriptedEngine, stop: threading.Event | None = None) -> Worker:  # type: ignore[no-untyped-def]
    settings, folders, journal = setup
    return Worker(
        settings,
        folders,
        journal,
        engine,
        preset_search_dirs(None),
        styles=load_styles(),
        stop_now=stop or threading.Event(),
    )


def test_invalid_input_from_the_engine_fails_the_job_without_retry(setup) -> None:  # type: ignore[no-untyped-def]
    job_id = _queue(setup[2], JobSpec(prompt="a cat", seed=1))
    engine = ScriptedEngine(InvalidInput("unknown sampler 'fast'", hint="use one of: euler"))
    _worker(setup, engine).run_one()
    job = setup[2].get_job(job_id)
    assert job.state == "failed" and "unknown sampler" in job.error and "euler" in job.error
    assert len(engine.requests) == 1


def test_out_of_memory_frees_memory_and_retries_later(setup) -> None:  # type: ignore[no-untyped-def]
    job_id = _queue(setup[2], JobSpec(prompt="a cat", seed=1))
    engine = ScriptedEngine(OutOfMemory("CUDA out of memory"))
    _worker(setup, engine).run_one()
    job = setup[2].get_job(job_id)
    assert engine.freed == 1
    assert job.state == "queued" and job.not_before > 0


def test_transient_errors_fail_the_job_after_max_attempts(setup) -> None:  # type: ignore[no-untyped-def]
    settings, _, journal = setup
    settings.journal.retry_backoff_seconds = 0.0
    job_id = _queue(journal, JobSpec(prompt="a cat", seed=1))
    engine = ScriptedEngine(*[TransientError("disk full") for _ in range(settings.journal.max_attempts)])
    worker = _worker(setup, engine)
    while worker.run_one():
        pass
    job = journal.get_job(job_id)
    assert job.state == "failed" and "disk full" in job.error
    assert len(engine.requests) == settings.journal.max_attempts


def test_an_interrupted_image_leaves_the_job_queued_without_using_an_attempt(setup) -> None:  # type: ignore[no-untyped-def]
    job_id = _queue(setup[2], JobSpec(prompt="a cat", seed=1))
    _worker(setup, ScriptedEngine(Interrupted("stopped after step 3"))).run_one()
    job = setup[2].get_job(job_id)
    assert job.state == "queued" and job.attempts == 0


def test_an_unexpected_engine_bug_is_retried_then_reported(setup) -> None:  # type: ignore[no-untyped-def]
    settings, _, journal = setup
    settings.journal.retry_backoff_seconds = 0.0
    job_id = _queue(journal, JobSpec(prompt="a cat", seed=1))
    engine = ScriptedEngine(*[RuntimeError("boom") for _ in range(settings.journal.max_attempts)])
    worker = _worker(setup, engine)
    while worker.run_one():
        pass
    job = journal.get_job(job_id)
    assert job.state == "failed" and "RuntimeError: boom" in job.error


def test_images_already_complete_are_not_rendered_again(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    job_id = _queue(journal, JobSpec(prompt="a cat", seed=10, images=3))
    engine = ScriptedEngine()
    first = _worker(setup, engine)
    first.run_one()
    assert [r.seed for r in engine.requests] == [10, 11, 12]
    # Pretend image 1 was lost in a crash before its sidecar: the job runs again.
    outputs = journal.outputs_for(job_id)
    lost = Path(outputs[1].path)
    lost.with_suffix(".json").unlink()
    with journal._write() as conn:  # rewind job and image 1 to where a crash would leave them
        conn.execute("UPDATE outputs SET state = 'planned' WHERE job_id = ? AND image_index = 1", (job_id,))
        conn.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))
    engine.requests.clear()
    _worker(setup, engine).run_one()
    assert [r.seed for r in engine.requests] == [11]
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == [
        "job_10_0.png",
        "job_11_1.png",
        "job_12_2.png",
    ]


def _queue_with_claimed_image(setup, spec: JobSpec, color: str = "red") -> int:  # type: ignore[no-untyped-def]
    """Queue ``spec`` as intake does for ``cat.png`` + ``cat.toml``: both moved into the claim folder."""
    _, folders, journal = setup
    claim = folders.processing / "k"
    claim.mkdir(parents=True)
    Image.new("RGB", (96, 64), color).save(claim / "cat.png")
    (claim / "cat.toml").write_text("")
    input_id = journal.begin_claim(
        key="k",
        relpath="cat.toml",
        sha256="0" * 64,
        size=1,
        files=[
            ("spec", folders.inbox / "cat.toml", claim / "cat.toml"),
            ("image", folders.inbox / "cat.png", claim / "cat.png"),
        ],
        specs=[(spec.model_dump_json(exclude_unset=True), 0)],
    )
    journal.complete_claim(input_id)
    return journal.jobs_for_input(input_id)[0].id


def _centre_colour(image: Image.Image) -> tuple[int, ...]:
    return image.getpixel((image.width // 2, image.height // 2))  # type: ignore[return-value]


def test_an_image_job_hands_its_claimed_image_to_the_engine_and_records_the_source(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    job_id = _queue_with_claimed_image(setup, JobSpec(image="cat.png", image_action="vary_strong", seed=1))
    engine = ScriptedEngine()
    _worker(setup, engine).run_one()
    assert journal.get_job(job_id).state == "done"
    [request] = engine.requests
    assert request.prompt == "" and request.image_task is not None
    assert (request.image_task.kind, request.image_task.strength) == ("vary", 0.85)
    assert _centre_colour(request.image_task.image) == (255, 0, 0)
    [sidecar] = folders.outbox.glob("*.json")
    assert json.loads(sidecar.read_text())["image_action"]["source_image"] == "cat.png"


def test_an_image_job_naming_another_inbox_image_uses_that_one_not_the_claimed_one(setup) -> None:  # type: ignore[no-untyped-def]
    folders = setup[1]
    Image.new("RGB", (96, 64), "blue").save(folders.inbox / "other.png")
    _queue_with_claimed_image(setup, JobSpec(image="other.png", image_action="vary_subtle", seed=1))
    engine = ScriptedEngine()
    _worker(setup, engine).run_one()
    [request] = engine.requests
    assert request.image_task is not None and _centre_colour(request.image_task.image) == (0, 0, 255)


def test_an_image_job_whose_image_is_gone_fails_at_once_without_running_the_engine(setup) -> None:  # type: ignore[no-untyped-def]
    job_id = _queue(setup[2], JobSpec(image="cat.png", image_action="vary_subtle", seed=1))
    engine = ScriptedEngine()
    _worker(setup, engine).run_one()
    job = setup[2].get_job(job_id)
    assert job.state == "failed" and "cat.png is gone" in job.error
    assert engine.requests == [] and job.attempts == 1


def test_styles_become_workloads_per_image_and_are_recorded(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    _queue(journal, JobSpec(prompt="a lighthouse", negative="fog", seed=3, styles=["Film Noir"]))
    engine = ScriptedEngine()
    _worker(setup, engine).run_one()
    [request] = engine.requests
    assert len(request.positive_workloads) == 1 and "a lighthouse" in request.positive_workloads[0]
    assert request.positive_workloads[0].startswith("film noir")
    assert request.negative_workloads[-1] == "fog"
    [sidecar] = folders.outbox.glob("*.json")
    assert json.loads(sidecar.read_text())["styles_applied"] == ["Film Noir"]
