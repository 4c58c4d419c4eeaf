"""Several workers (threads, Journal objects, processes) sharing one journal file."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fooocusd.journal import JobState, Journal
from tests.test_journal_helpers import add_input, spec_json

JOB_COUNT = 200


def _fill_queue(db_path: Path, root: Path, jobs: int) -> None:
    per_input = 10
    with Journal.open(db_path, "intake") as journal:
        for n in range(jobs // per_input):
            add_input(journal, root, f"batch{n}.txt", [(spec_json(f"{n}-{k}"), 0) for k in range(per_input)])


def _drain(journal: Journal) -> list[int]:
    taken: list[int] = []
    while (job := journal.claim_next_job(lease_seconds=60)) is not None:
        taken.append(job.id)
        assert journal.finish_job(job.id, "done")
    return taken


def test_two_journal_objects_on_one_file_never_claim_the_same_job(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    _fill_queue(db_path, tmp_path, 20)
    with Journal.open(db_path, "gpu0") as first, Journal.open(db_path, "gpu1") as second:
        taken: dict[str, list[int]] = {"gpu0": [], "gpu1": []}
        while True:
            progressed = False
            for journal in (first, second):
                job = journal.claim_next_job(lease_seconds=60)
                if job is not None:
                    taken[journal.owner].append(job.id)
                    progressed = True
            if not progressed:
                break
    assert len(taken["gpu0"]) == len(taken["gpu1"]) == 10
    assert set(taken["gpu0"]).isdisjoint(taken["gpu1"])


def test_threads_sharing_one_journal_claim_each_job_once(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    _fill_queue(db_path, tmp_path, 40)
    with Journal.open(db_path, "gpu0") as journal, ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _drain(journal), range(4)))
    everything = [job_id for taken in results for job_id in taken]
    assert len(everything) == len(set(everything)) == 40


def _worker(
    db_path: Path, owner: str, ready: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:
    with Journal.open(db_path, owner) as journal:
        ready.wait(60)
        taken: list[int] = []
        while (job := journal.claim_next_job(lease_seconds=60)) is not None:
            taken.append(job.id)
            time.sleep(0.001)  # a sliver of "work", so that the two processes interleave
            assert journal.finish_job(job.id, "done")
    results.put((owner, taken))


def test_two_processes_claim_each_of_200_jobs_exactly_once(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    _fill_queue(db_path, tmp_path, JOB_COUNT)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(2)
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(db_path, f"gpu{n}", ready, results)) for n in range(2)]
    for worker in workers:
        worker.start()
    taken = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0

    everything = taken["gpu0"] + taken["gpu1"]
    assert sorted(everything) == sorted(set(everything)), "a job was claimed twice"
    assert len(everything) == JOB_COUNT
    assert taken["gpu0"] and taken["gpu1"], "both processes should have done some of the work"
    with Journal.open_read_only(db_path) as reader:
        status = reader.status()
    assert status["counts"]["done"] == JOB_COUNT
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT MAX(attempts), MIN(attempts) FROM jobs").fetchone() == (1, 1)


def test_status_reads_committed_state_while_a_writer_holds_an_open_transaction(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    with Journal.open(db_path, "gpu0") as journal:
        add_input(journal, tmp_path, "a.txt")
        add_input(journal, tmp_path, "b.txt")
        job = journal.claim_next_job(lease_seconds=60)
        assert job is not None
        journal.heartbeat(job.id, 4, 30, lease_seconds=60)

    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE jobs SET state = 'cancelled' WHERE state = 'queued'")
    try:
        started = time.monotonic()
        with Journal.open_read_only(db_path) as reader:
            status = reader.status()
        assert time.monotonic() - started < 2, "the reader must not wait for the writer"
        assert status["counts"]["queued"] == 1 and status["counts"]["cancelled"] == 0, "only committed state"
        running = [(r["id"], r["progress_step"], r["progress_total"]) for r in status["running"]]
        assert running == [(job.id, 4, 30)]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_claimed_job_is_invisible_to_other_owners_claims(tmp_path: Path) -> None:
    db_path = tmp_path / "journal.sqlite3"
    with Journal.open(db_path, "gpu0") as first, Journal.open(db_path, "gpu1") as second:
        add_input(first, tmp_path, "only.txt")
        assert first.claim_next_job(lease_seconds=60) is not None
        assert second.claim_next_job(lease_seconds=60) is None
        running = second.status()["running"]
        assert [r["owner"] for r in running] == ["gpu0"]
        job = second.find_job("only.txt")
        assert job is not None and job.state == JobState.RUNNING
