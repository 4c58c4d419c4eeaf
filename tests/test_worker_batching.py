"""Batching queued jobs, end to end: the real daemon, journal, outbox and the tiny-random SDXL."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import fooocusd.engine.sdxl as sdxl_module
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for
from tests.reliability_checks import (
    assert_every_input_ended_exactly_once,
    assert_journal_consistent,
    assert_outputs_complete_and_unique,
    temp_leftovers,
)


def _configure(box: Sandbox, batch_size: int, extra: str = "") -> None:
    box.write_config(extra)
    text = box.config.read_text(encoding="utf-8")
    box.config.write_text(text.replace('device = "cpu"', f'device = "cpu"\nbatch_size = {batch_size}'))


def _records(box: Sandbox) -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in box.sidecars()}


def _jobs(box: Sandbox) -> list[tuple[int, str, int, str]]:
    """(seq, state, attempts, error) of every job, in job order."""
    with sqlite3.connect(box.state / "journal.sqlite3") as db:
        rows = db.execute("SELECT seq, state, attempts, error FROM jobs ORDER BY id").fetchall()
    return [(seq, state, attempts, error or "") for seq, state, attempts, error in rows]


THREE_JOBS = """
steps = 2
[[job]]
prompt = "a red fox"
seed = 1
[[job]]
prompt = "a lighthouse"
seed = 2
[[job]]
prompt = "an old library"
seed = 3
"""


def test_three_dropped_prompt_files_share_batches_and_each_image_is_written_once(sandbox: Sandbox) -> None:
    _configure(sandbox, batch_size=3)
    names = ["fox.txt", "owl.txt", "elk.txt"]
    for seed, name in enumerate(names):
        sandbox.drop(name, f"a {name[:3]} in snow\nseed: {seed}\nsteps: 2\n")

    summary = sandbox.drain()

    assert summary.ok and summary.jobs_done == 3 and summary.images_written == 3
    assert_every_input_ended_exactly_once(sandbox, names)
    assert_outputs_complete_and_unique(sandbox)
    assert_journal_consistent(sandbox)
    sizes = sorted(record["batch_size"] for record in _records(sandbox).values())
    assert sizes[-1] > 1, f"no image shared a batch: {sizes}"


def test_the_jobs_of_one_file_render_in_one_batch_under_their_own_names(sandbox: Sandbox) -> None:
    _configure(sandbox, batch_size=3)
    sandbox.drop("three.toml", THREE_JOBS)

    assert sandbox.drain().ok

    records = _records(sandbox)
    assert sorted(records) == ["three-1_1_0.json", "three-2_2_0.json", "three-3_3_0.json"]
    assert {record["batch_size"] for record in records.values()} == {3}
    assert [records[f"three-{n}_{n}_0.json"]["prompt"] for n in (1, 2, 3)] == [
        "a red fox",
        "a lighthouse",
        "an old library",
    ]
    assert [state for _, state, _, _ in _jobs(sandbox)] == ["done"] * 3
    assert_outputs_complete_and_unique(sandbox)


def test_a_job_of_three_images_with_batch_two_renders_two_then_one(sandbox: Sandbox) -> None:
    _configure(sandbox, batch_size=2)
    sandbox.drop("fox.txt", "a fox in snow\nseed: 5\nimages: 3\nsteps: 2\n")

    assert sandbox.drain().ok

    records = _records(sandbox)
    assert sorted(records) == ["fox_5_0.json", "fox_6_1.json", "fox_7_2.json"]
    assert [records[name]["batch_size"] for name in sorted(records)] == [2, 2, 1]
    assert [records[name]["seed"] for name in sorted(records)] == [5, 6, 7]
    assert_outputs_complete_and_unique(sandbox)


def test_a_bad_job_in_a_batch_fails_alone_and_the_others_complete(sandbox: Sandbox) -> None:
    _configure(sandbox, batch_size=3)
    bad = THREE_JOBS.replace("a lighthouse", "a lighthouse, embedding:nowhere_to_be_found")
    sandbox.drop("three.toml", bad)

    summary = sandbox.drain()

    assert summary.jobs_done == 2 and summary.jobs_failed == 1
    jobs = _jobs(sandbox)
    assert [(state, attempts) for _, state, attempts, _ in jobs] == [("done", 1), ("failed", 1), ("done", 1)]
    assert "nowhere_to_be_found" in jobs[1][3]
    assert sorted(_records(sandbox)) == ["three-1_1_0.json", "three-3_3_0.json"]
    report = (sandbox.failed / "three.toml.error.txt").read_text(encoding="utf-8")
    assert "Job 2 of 3" in report and "nowhere_to_be_found" in report
    assert_outputs_complete_and_unique(sandbox)
    assert_journal_consistent(sandbox)


class _DiskFullOnce:
    """ENOSPC for the first ``times`` writes into files whose name contains ``marker``."""

    def __init__(self, folder: Path, marker: str, times: int = 1) -> None:
        self.folder = str(folder.resolve()) + os.sep
        self.marker = marker
        self.left = times

    def wrap(self, real: Callable[..., int]) -> Callable[..., int]:
        def write(fd: int, *args: object) -> int:
            if self.left > 0:
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    target = ""
                if target.startswith(self.folder) and self.marker in os.path.basename(target):
                    self.left -= 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args)

        return write


def test_disk_full_during_a_background_write_waits_and_writes_that_image_without_a_retry(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(sandbox, batch_size=3, extra="[journal]\nretry_backoff_seconds = 0.1\n")
    sandbox.outbox.mkdir(parents=True)
    monkeypatch.setattr(os, "write", _DiskFullOnce(sandbox.outbox, "three-2_").wrap(os.write))
    sandbox.drop("three.toml", THREE_JOBS)

    assert sandbox.drain().ok

    jobs = _jobs(sandbox)
    assert [(state, attempts) for _, state, attempts, _ in jobs] == [("done", 1), ("done", 1), ("done", 1)]
    assert sorted(_records(sandbox)) == ["three-1_1_0.json", "three-2_2_0.json", "three-3_3_0.json"]
    assert temp_leftovers(sandbox) == []
    assert_every_input_ended_exactly_once(sandbox, ["three.toml"])
    assert_outputs_complete_and_unique(sandbox)
    assert_journal_consistent(sandbox)


_VOLATILE = {"timings", "created"}


def _outputs_of_a_run(root: Path, background: bool, engine: str = "") -> dict[str, tuple[bytes, dict]]:  # type: ignore[type-arg]
    box = Sandbox(root)
    box.write_config(f"[outbox]\nbackground_writes = {str(background).lower()}\n")
    if engine:
        text = box.config.read_text(encoding="utf-8")
        box.config.write_text(text.replace('device = "cpu"', f'device = "cpu"\n{engine}'), encoding="utf-8")
    box.drop("fox.txt", "a fox in snow\nseed: 9\nimages: 2\nsteps: 2\n")
    box.drop("owl.txt", "an owl at night\nseed: 4\nsteps: 2\n")
    assert box.drain().ok
    outputs = {}
    for image in box.images():
        record = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
        with Image.open(image) as opened:
            pixels = opened.tobytes()
        outputs[image.name] = (pixels, {k: v for k, v in record.items() if k not in _VOLATILE})
    return outputs


def test_background_writes_on_and_off_give_the_same_images_and_sidecars(tmp_path: Path) -> None:
    inline = _outputs_of_a_run(tmp_path / "inline", background=False)
    background = _outputs_of_a_run(tmp_path / "background", background=True)

    assert sorted(inline) == ["fox_10_1.png", "fox_9_0.png", "owl_4_0.png"]
    assert sorted(background) == sorted(inline)
    for name in inline:
        assert background[name][0] == inline[name][0], f"{name}: pixels differ"
        assert background[name][1] == inline[name][1], f"{name}: sidecar differs"


def test_decodes_overlapped_with_the_next_render_give_the_same_images_on_the_publisher_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decode_threads: list[str] = []
    real_decode = sdxl_module.decode_latents

    def recording_decode(*args: Any, **kwargs: Any) -> Image.Image:
        decode_threads.append(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(sdxl_module, "decode_latents", recording_decode)
    at_once = _outputs_of_a_run(tmp_path / "at_once", background=True)
    at_once_threads, decode_threads[:] = list(decode_threads), []
    overlapped = _outputs_of_a_run(tmp_path / "overlapped", background=True, engine='overlap_decode = "on"')

    assert sorted(overlapped) == sorted(at_once) == ["fox_10_1.png", "fox_9_0.png", "owl_4_0.png"]
    for name in at_once:
        assert overlapped[name][0] == at_once[name][0], f"{name}: pixels differ"
        assert overlapped[name][1] == at_once[name][1], f"{name}: sidecar differs"
    assert len(decode_threads) == len(at_once_threads) == 3
    assert all(name.startswith("fooocusd-publisher") for name in decode_threads), decode_threads
    assert not any(name.startswith("fooocusd-publisher") for name in at_once_threads), at_once_threads


def test_shutdown_while_a_batch_renders_leaves_all_its_jobs_queued(sandbox: Sandbox) -> None:
    _configure(sandbox, batch_size=3)
    sandbox.drop("three.toml", THREE_JOBS.replace("steps = 2", "steps = 200"))

    with RunningDaemon(sandbox.settings()) as running:

        def all_three_rendering() -> bool:
            rows = sandbox.journal_rows("SELECT state, progress_step FROM jobs")
            return len(rows) == 3 and all(state == "running" and step > 0 for state, step in rows)

        wait_for(all_three_rendering, what="the batch of three to be rendering")
        running.daemon.request_stop()
        running.daemon.request_stop()  # the second request abandons the image being rendered

    assert [(state, attempts) for _, state, attempts, _ in _jobs(sandbox)] == [("queued", 0)] * 3
    assert sandbox.images() == [] and sandbox.sidecars() == []
    assert temp_leftovers(sandbox) == []
