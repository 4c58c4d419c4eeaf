"""Two daemons (one per GPU in production) with their own journals share one inbox and outbox."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from fooocusd.journal.journal import Journal
from fooocusd.settings import Settings
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for

FILES = 30
# Small and quick: this test is about who takes what, not about pictures.
JOB = 'prompt = "a lighthouse, number {n}"\naspect = "64*64"\nsteps = 1\nseed = {n}\nname = "job{n}"\n'


def _instance(shared: Sandbox, name: str) -> Settings:
    """Settings for one instance: the shared folders, its own state folder (and so its own journal)."""
    settings = shared.settings()
    paths = settings.paths.model_copy(update={"state": shared.root / f"state-{name}"})
    return settings.model_copy(update={"paths": paths})


def _ended(shared: Sandbox) -> list[Path]:
    return [p for p in shared.files(shared.done) + shared.files(shared.failed) if p.suffix == ".toml"]


def _journal_counts(shared: Sandbox, name: str) -> Counter[str]:
    with Journal.open_read_only(shared.root / f"state-{name}" / "journal.sqlite3") as journal:
        return Counter({state: n for state, n in journal.status()["inputs"].items() if n})


def test_two_daemons_on_one_inbox_take_every_file_once_and_never_clobber(sandbox: Sandbox) -> None:
    first, second = _instance(sandbox, "gpu0"), _instance(sandbox, "gpu1")
    with RunningDaemon(first) as one, RunningDaemon(second) as two:
        for n in range(FILES):  # a stream, dropped while both run
            sandbox.drop(f"job{n:02d}.toml", JOB.format(n=n))
            time.sleep(0.05)
        wait_for(lambda: len(_ended(sandbox)) >= FILES, timeout=240, what="every job file to end")
        wait_for(lambda: len(sandbox.sidecars()) >= FILES, timeout=60, what="every sidecar")
    assert one.error is None and two.error is None

    ended = [p.name for p in _ended(sandbox)]
    assert sorted(ended) == [f"job{n:02d}.toml" for n in range(FILES)]  # each exactly once
    assert sandbox.files(sandbox.failed) == [], [p.read_text() for p in sandbox.files(sandbox.failed)]
    assert sandbox.files(sandbox.inbox) == []

    images = sandbox.images()
    assert len(images) == FILES
    # Never clobbered: each image is whole, is the one its sidecar describes, and is its job's.
    seeds = []
    for image in images:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert sidecar["output_file"] == image.name
        seeds.append(sidecar["seed"])
    assert sorted(seeds) == list(range(FILES))

    # Both took part (loosely: the split depends on timing), and neither kept a job it lost.
    assert one.summary is not None and two.summary is not None
    assert one.summary.images_written + two.summary.images_written == FILES
    assert one.summary.inputs_failed == two.summary.inputs_failed == 0
    counts = [_journal_counts(sandbox, name) for name in ("gpu0", "gpu1")]
    assert sum(c["finished"] for c in counts) == FILES
    assert all(set(c) <= {"finished", "abandoned"} for c in counts), counts
    if min(one.summary.jobs_done, two.summary.jobs_done) == 0:
        print(f"note: one instance did all the work ({one.summary}, {two.summary})")
