"""The queue benchmark's steady rate counts whole batches (``bench/queue_throughput.py``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from queue_throughput import _outputs, batch_ends, extra_cost_pct, steady_window


def test_each_batch_ends_after_as_many_images_as_it_held() -> None:
    assert batch_ends([3, 3, 3, 4, 4, 4, 4, 1]) == [2, 6, 7]
    assert batch_ends([4, 4, 4, 4, 4]) == [3, 4]  # a last batch cut short by the run
    assert batch_ends([]) == []


def test_the_steady_stretch_is_full_batches_after_the_first() -> None:
    assert steady_window([3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 1]) == (2, 10)
    assert steady_window([4] * 12) == (3, 11)
    assert steady_window([3, 3, 3, 1]) is None  # no full batch after the first


def test_steady_rate_runs_from_the_end_of_the_first_batch_when_it_was_smaller(tmp_path: Path) -> None:
    # A queue of 12 that rendered as 3 + 4 + 4 + 1 (the first batch formed before every job was
    # queued, the last one is what was left): 8 images in the two full batches after the first,
    # in the 10 s from its end (t = 10) to the end of the last full one (t = 20).
    batches = [(3, 10.0), (4, 15.0), (4, 20.0), (1, 22.0)]
    index = 0
    for size, written in batches:
        for _ in range(size):
            sidecar = tmp_path / f"job-{index:03d}.json"
            sidecar.write_text(json.dumps({"batch_size": size}), encoding="utf-8")
            os.utime(sidecar, (written + index * 1e-3, written + index * 1e-3))
            index += 1

    result = _outputs(tmp_path, jobs=12, started=0.0)

    assert result["largest_batch"] == 4
    assert result["steady_s_per_image"] == pytest.approx((20.010 - 10.002) / 8, abs=1e-3)


def test_a_queue_that_wrote_fewer_images_than_it_was_given_reports_an_error_and_no_rate(
    tmp_path: Path,
) -> None:
    # Every input left in the inbox (on 2026-11-29 a missing package failed each one at intake):
    # a rate over part of the queue, or none, must not stand as the queue's throughput.
    for index, written in enumerate((10.0, 11.0, 12.0, 13.0)):
        sidecar = tmp_path / f"job-{index:03d}.json"
        sidecar.write_text(json.dumps({"batch_size": 2}), encoding="utf-8")
        os.utime(sidecar, (written, written))

    result = _outputs(tmp_path, jobs=16, started=0.0)

    assert result["images"] == 4
    assert "steady_s_per_image" not in result
    assert "wrote 4 of 16 images" in result["error"]


def test_a_queue_that_wrote_every_image_reports_no_error(tmp_path: Path) -> None:
    for index in range(4):
        (tmp_path / f"job-{index:03d}.json").write_text(json.dumps({"batch_size": 1}), encoding="utf-8")

    assert "error" not in _outputs(tmp_path, jobs=4, started=0.0)


def test_the_extra_cost_of_a_queue_is_its_rate_over_the_plain_ones() -> None:
    assert extra_cost_pct({"steady_s_per_image": 0.75}, {"steady_s_per_image": 0.78}) == 4.0
    assert extra_cost_pct({"steady_s_per_image": 0.75}, {"images": 3, "error": "wrote 3 of 16"}) is None
    assert extra_cost_pct({}, {"steady_s_per_image": 0.78}) is None
