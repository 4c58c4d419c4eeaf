"""The publisher alone, and the worker's overlap/batching rules with scripted engines (unit tests of
the worker layer: the engine is a fake, the journal, outbox and writer are real)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import fooocusd.service.worker as worker_module
from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.engine.styles import load_styles
from fooocusd.errors import Interrupted, InvalidInput, TransientError
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.outbox import folder_names
from fooocusd.service.folders import Folders
from fooocusd.service.publisher import Publisher
from fooocusd.service.worker import Worker
from tests.daemon_harness import Sandbox

# -- the publisher alone ------------------------------------------------------------------------


def test_publisher_runs_the_work_on_its_own_thread_and_returns_its_context() -> None:
    publisher: Publisher[str] = Publisher(background=True)
    publisher.submit(lambda: threading.current_thread().name, "image 0 of job 7")
    assert publisher.busy
    settled = publisher.settle()
    publisher.close()
    assert settled is not None and settled.context == "image 0 of job 7" and settled.error is None
    assert settled.result.startswith("fooocusd-publisher")
    assert not publisher.busy and publisher.settle() is None


def test_publisher_refuses_a_publication_beyond_its_depth_until_the_oldest_is_settled() -> None:
    publisher: Publisher[int] = Publisher(background=True, depth=2)
    publisher.submit(lambda: 1, 1)
    publisher.submit(lambda: 2, 2)
    assert publisher.full
    with pytest.raises(RuntimeError, match="settle a publication first: 2 are outstanding"):
        publisher.submit(lambda: 3, 3)
    settled = publisher.settle()
    assert settled is not None and (settled.context, settled.result) == (1, 1)
    publisher.submit(lambda: 3, 3)
    assert [publisher.settle().context, publisher.settle().context] == [2, 3]  # type: ignore[union-attr]
    publisher.close()


def test_publisher_settles_in_hand_over_order_and_without_waiting_only_what_has_ended() -> None:
    release = threading.Event()
    publisher: Publisher[str] = Publisher(background=True, depth=3)
    publisher.submit(lambda: release.wait(timeout=10), "slow")
    publisher.submit(lambda: "quick", "quick")

    assert publisher.settle(wait=False) is None, "the oldest has not ended: nothing is taken"
    release.set()
    outcomes = [publisher.settle(), publisher.settle()]
    publisher.close()

    assert [(each.context, each.result) for each in outcomes if each is not None] == [
        ("slow", True),
        ("quick", "quick"),
    ]


def test_publisher_hands_back_a_failure_with_the_context_it_was_given() -> None:
    def disk_full() -> None:
        raise TransientError("disk full while writing fox.png")

    for background in (True, False):
        publisher: Publisher[str] = Publisher(background=background)
        publisher.submit(disk_full, "fox")
        settled = publisher.settle()
        publisher.close()
        assert settled is not None and settled.context == "fox"
        assert isinstance(settled.error, TransientError) and "disk full" in settled.error.message


def test_publisher_without_background_writes_runs_the_work_at_hand_over() -> None:
    ran: list[str] = []
    publisher: Publisher[None] = Publisher(background=False)
    publisher.submit(lambda: ran.append(threading.current_thread().name), None)
    assert ran == [threading.current_thread().name]
    publisher.settle()


# -- the worker with scripted engines -----------------------------------------------------------


def _flat(request: GenerationRequest) -> GeneratedImage:
    return GeneratedImage(
        image=Image.new("RGB", (32, 32), (request.seed % 256, 0, 0)),
        width=32,
        height=32,
        model_name="scripted",
        model_path="",
        model_sha256="",
        device="cpu",
        dtype="float32",
    )


class OneAtATime:
    """Renders one image per call; ``on_generate(request)`` runs first and may raise."""

    def __init__(self, on_generate: Callable[[GenerationRequest], None] = lambda _r: None) -> None:
        self.on_generate = on_generate
        self.seeds: list[int] = []

    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, progress=None, should_stop=None) -> GeneratedImage:  # type: ignore[no-untyped-def]
        self.seeds.append(request.seed)
        self.on_generate(request)
        if progress is not None:
            progress(request.steps, request.steps)
        return _flat(request)

    def free_memory(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {}


class Batching(OneAtATime):
    """Batches up to ``limit`` requests with equal steps; ``during_batch(progress)`` runs mid-batch."""

    def __init__(self, limit: int, during_batch: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.during_batch = during_batch
        self.batches: list[list[int]] = []

    def batch_limit(self) -> int:
        return self.limit

    def batch_key(self, request: GenerationRequest) -> int:
        return request.steps

    def generate_batch(self, requests, progress=None, should_stop=None) -> list[GeneratedImage]:  # type: ignore[no-untyped-def]
        self.batches.append([request.seed for request in requests])
        for request in requests:
            self.on_generate(request)
        if progress is not None:
            progress(1, 2)
        self.during_batch()
        if should_stop is not None and should_stop():
            raise Interrupted("stopped after step 1")
        if progress is not None:
            progress(2, 2)
        return [_flat(request) for request in requests]


@pytest.fixture
def setup(sandbox: Sandbox):  # type: ignore[no-untyped-def]
    settings = sandbox.settings()
    settings.journal.retry_backoff_seconds = 0.0
    folders = Folders.from_paths(settings.paths.resolved())
    folders.state.mkdir(parents=True)
    journal = Journal.open(folders.journal_db, owner="test")
    yield settings, folders, journal
    journal.close()


def _queue(journal: Journal, name: str, spec: JobSpec) -> int:
    input_id = journal.begin_claim(
        key=name,
        relpath=f"{name}.txt",
        sha256=name.ljust(64, "0"),
        size=1,
        files=[("spec", Path(f"/inbox/{name}.txt"), Path(f"/state/processing/{name}/{name}.txt"))],
        specs=[(spec.model_dump_json(exclude_unset=True), 0)],
    )
    journal.complete_claim(input_id)
    return journal.jobs_for_input(input_id)[0].id


def _worker(setup, engine: OneAtATime, stop: threading.Event | None = None) -> Worker:  # type: ignore[no-untyped-def]
    settings, folders, journal = setup
    return Worker(
        settings,
        folders,
        journal,
        engine,  # type: ignore[arg-type]
        preset_search_dirs(None),
        styles=load_styles(),
        stop_now=stop or threading.Event(),
    )


def _drain(worker: Worker) -> None:
    while worker.run_one():
        pass
    worker.close()


def _states(journal: Journal, *job_ids: int) -> list[tuple[str, int]]:
    jobs = [journal.get_job(job_id) for job_id in job_ids]
    return [(job.state.value, job.attempts) for job in jobs if job is not None]


def test_an_image_is_written_while_the_next_one_renders(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    job_id = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1, images=2))
    second_render_started = threading.Event()
    overlapped: list[bool] = []
    real_write = worker_module.write_image_with_sidecar

    def write_waiting_for_the_next_render(image: Image.Image, record: dict, target: Path, **kw: Any):  # type: ignore[no-untyped-def,type-arg]
        if record["image_index"] == 0:
            overlapped.append(second_render_started.wait(timeout=10))
        return real_write(image, record, target, **kw)

    monkeypatch.setattr(worker_module, "write_image_with_sidecar", write_waiting_for_the_next_render)
    engine = OneAtATime(lambda request: second_render_started.set() if request.seed == 2 else None)

    _drain(_worker(setup, engine))

    assert overlapped == [True], "image 0 was not being written while image 1 rendered"
    assert _states(journal, job_id) == [("done", 1)]
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == ["fox_1_0.png", "fox_2_1.png"]


def test_every_image_of_a_batch_is_written_while_the_next_batch_renders(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, folders, journal = setup
    jobs = [_queue(journal, name, JobSpec(prompt=name, seed=seed)) for seed, name in enumerate("abcdef", 1)]
    second_batch_started = threading.Event()
    overlapped: dict[str, bool] = {}
    real_write = worker_module.write_image_with_sidecar

    def write_waiting_for_the_next_batch(image: Image.Image, record: dict, target: Path, **kw: Any):  # type: ignore[no-untyped-def,type-arg]
        if record["seed"] <= 3:
            overlapped[target.stem] = second_batch_started.wait(timeout=5)
        return real_write(image, record, target, **kw)

    monkeypatch.setattr(worker_module, "write_image_with_sidecar", write_waiting_for_the_next_batch)
    engine = Batching(
        limit=3, on_generate=lambda request: second_batch_started.set() if request.seed == 4 else None
    )

    _drain(_worker(setup, engine))

    assert engine.batches == [[1, 2, 3], [4, 5, 6]]
    assert overlapped == {"a_1_0": True, "b_2_0": True, "c_3_0": True}, "the render waited for a write"
    assert _states(journal, *jobs) == [("done", 1)] * 6
    assert len(list(folders.outbox.glob("*.png"))) == 6


def test_without_background_writes_each_image_is_written_before_the_next_render(setup) -> None:  # type: ignore[no-untyped-def]
    settings, folders, journal = setup
    settings.outbox.background_writes = False
    _queue(journal, "fox", JobSpec(prompt="a fox", seed=1, images=2))
    seen: list[list[str]] = []
    engine = OneAtATime(lambda _r: seen.append(sorted(p.name for p in folders.outbox.glob("*.json"))))

    _drain(_worker(setup, engine))

    assert seen == [[], ["fox_1_0.json"]]


def test_a_failed_background_write_is_charged_to_its_own_job_not_the_next(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, folders, journal = setup
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1))
    owl = _queue(journal, "owl", JobSpec(prompt="an owl", seed=2))
    real_write = worker_module.write_image_with_sidecar
    refusals: list[str] = []

    def full_for_the_fox(image: Image.Image, record: dict, target: Path, **kw: Any):  # type: ignore[no-untyped-def,type-arg]
        if target.name.startswith("fox") and not refusals:
            refusals.append(target.name)
            raise TransientError("disk full while writing fox_1_0.png", hint="free some space")
        return real_write(image, record, target, **kw)

    monkeypatch.setattr(worker_module, "write_image_with_sidecar", full_for_the_fox)
    worker = _worker(setup, OneAtATime())
    worker.run_one()  # renders the fox; its write runs while the owl is claimed and rendered next
    worker.run_one()  # the owl's render done, the fox's write is settled: the fox goes back to the queue

    assert "disk full" in (journal.get_job(fox).error or "")
    assert journal.get_job(owl).error is None
    _drain(worker)
    assert _states(journal, fox, owl) == [("done", 2), ("done", 1)]
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == ["fox_1_0.png", "owl_2_0.png"]


def test_a_failed_write_in_a_batch_retries_its_job_for_the_missing_image_only(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, folders, journal = setup
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1, images=2))
    real_write = worker_module.write_image_with_sidecar
    real_submit = Publisher.submit
    both_handed_over = threading.Event()
    refusals: list[str] = []

    def counting_submit(self: Publisher[Any], work: Callable[[], Any], context: Any) -> None:
        real_submit(self, work, context)
        if self.full:
            both_handed_over.set()

    def full_once_for_the_first_image(image: Image.Image, record: dict, target: Path, **kw: Any):  # type: ignore[no-untyped-def,type-arg]
        if record["image_index"] == 0 and not refusals:
            refusals.append(target.name)
            assert both_handed_over.wait(timeout=5)  # the failure is known only after image 1 was handed over
            raise TransientError("disk full while writing", hint="free some space")
        return real_write(image, record, target, **kw)

    monkeypatch.setattr(Publisher, "submit", counting_submit)
    monkeypatch.setattr(worker_module, "write_image_with_sidecar", full_once_for_the_first_image)
    engine = Batching(limit=2)
    _drain(_worker(setup, engine))

    assert engine.batches == [[1, 2]]
    assert engine.seeds == [1], "the retry renders only the image that was not written"
    assert _states(journal, fox) == [("done", 2)]
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == ["fox_1_0.png", "fox_2_1.png"]


def test_a_failed_batch_is_rendered_again_one_by_one_so_only_the_bad_job_fails(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    jobs = [_queue(journal, name, JobSpec(prompt=name, seed=seed)) for seed, name in enumerate("abc", 1)]

    def refuse_b(request: GenerationRequest) -> None:
        if request.seed == 2:
            raise InvalidInput("b cannot be drawn", hint="draw something else")

    engine = Batching(limit=3, on_generate=refuse_b)
    _drain(_worker(setup, engine))

    assert engine.batches == [[1, 2, 3]]
    assert engine.seeds == [1, 2, 3], "after the batch failed, each image rendered alone"
    assert _states(journal, *jobs) == [("done", 1), ("failed", 1), ("done", 1)]
    assert "b cannot be drawn" in (journal.get_job(jobs[1]).error or "")
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == ["a_1_0.png", "c_3_0.png"]


def test_a_claimed_job_that_does_not_fit_the_batch_is_kept_and_runs_next(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, journal = setup
    short = _queue(journal, "short", JobSpec(prompt="a", seed=1, steps=2))
    long = _queue(journal, "long", JobSpec(prompt="b", seed=2, steps=3))
    engine = Batching(limit=2)
    worker = _worker(setup, engine)

    worker.run_one()
    assert _states(journal, long) == [("running", 1)], "claimed to fill the batch, then held"
    _drain(worker)

    assert engine.seeds == [1, 2], "each rendered alone: their keys differ"
    assert _states(journal, short, long) == [("done", 1), ("done", 1)]


def test_a_job_cancelled_during_a_batch_is_dropped_and_the_others_complete(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1))
    owl = _queue(journal, "owl", JobSpec(prompt="an owl", seed=2))
    engine = Batching(limit=2, during_batch=lambda: journal.cancel_job(fox))

    _drain(_worker(setup, engine))

    assert engine.batches == [[1, 2]]
    assert _states(journal, fox, owl) == [("cancelled", 1), ("done", 1)]
    assert sorted(p.name for p in folders.outbox.glob("*.png")) == ["owl_2_0.png"]


def test_stopping_during_a_batch_puts_every_claimed_job_back_in_the_queue(setup) -> None:  # type: ignore[no-untyped-def]
    _, folders, journal = setup
    stop = threading.Event()
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1))
    owl = _queue(journal, "owl", JobSpec(prompt="an owl", seed=2, images=2))  # its 2nd image waits
    engine = Batching(limit=2, during_batch=stop.set)
    worker = _worker(setup, engine, stop)

    assert worker.run_one()
    worker.close()

    assert engine.batches == [[1, 2]]
    assert _states(journal, fox, owl) == [("queued", 0), ("queued", 0)]
    assert list(folders.outbox.glob("*.png")) == []


def test_a_reload_prepares_a_job_held_ahead_again_and_leaves_a_started_one_alone(setup) -> None:  # type: ignore[no-untyped-def]
    settings, folders, journal = setup
    settings.generation.negative = "old negative"
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1, images=2))
    owl = _queue(journal, "owl", JobSpec(prompt="an owl", seed=3))
    worker = _worker(setup, Batching(limit=1))
    worker.run_one()  # the fox renders; the owl is claimed ahead and prepared with the old settings
    assert [(run.job_id, run.started) for run in worker.claimed] == [(fox, True), (owl, False)]

    reloaded = settings.model_copy(deep=True)
    reloaded.generation.negative = "new negative"
    worker.adopt_settings(reloaded, load_styles())
    _drain(worker)

    assert _states(journal, fox, owl) == [("done", 1), ("done", 1)]
    negatives = {p.name: json.loads(p.read_text())["negative"] for p in folders.outbox.glob("*.json")}
    assert negatives == {
        "fox_1_0.json": "old negative",
        "fox_2_1.json": "old negative",
        "owl_3_0.json": "new negative",
    }


def test_no_job_is_claimed_while_a_reload_waits_to_be_applied(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, journal = setup
    fox = _queue(journal, "fox", JobSpec(prompt="a fox", seed=1))
    worker = _worker(setup, OneAtATime())
    worker.may_claim = lambda: False

    assert worker.run_one() is False
    assert _states(journal, fox) == [("queued", 0)]


def test_a_queue_into_a_large_folder_lists_it_once_and_never_reuses_a_name(  # type: ignore[no-untyped-def]
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folder_names, "RELIST_COST_FACTOR", 1e12)  # as if listing took very long
    _, folders, journal = setup
    folders.outbox.mkdir(parents=True, exist_ok=True)
    (folders.outbox / "FOX_1_0.png").write_bytes(b"someone else's")  # a case variant of job 1's name
    jobs = [_queue(journal, f"fox{i}", JobSpec(prompt="a fox", seed=1, name="fox")) for i in range(4)]
    worker = _worker(setup, OneAtATime())
    _drain(worker)
    assert _states(journal, *jobs) == [("done", 1)] * 4
    written = sorted(path.name for path in folders.outbox.glob("fox*.png"))
    assert written == ["fox_1_0-1.png", "fox_1_0-2.png", "fox_1_0-3.png", "fox_1_0-4.png"]
    assert worker._folder_names.listings == 1
