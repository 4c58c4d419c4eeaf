"""Invariants that must hold after any sequence of crashes followed by one clean drain."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

from PIL import Image

from tests.daemon_harness import Sandbox

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def temp_leftovers(box: Sandbox) -> list[Path]:
    """Anything a half-finished write could leave: our temps, partials, hidden files in the outputs."""
    found: list[Path] = []
    for folder in (box.outbox, box.done, box.failed):
        if folder.exists():
            found += [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    return found


def assert_every_input_ended_exactly_once(box: Sandbox, dropped: list[str]) -> None:
    ended = [p.name for p in box.files(box.done)] + [
        p.name for p in box.files(box.failed) if not p.name.endswith(".error.txt")
    ]
    counts = Counter(ended)
    missing = sorted(set(dropped) - set(counts))
    twice = sorted(name for name, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - set(dropped))
    assert not missing, f"inputs lost (neither in done/ nor failed/): {missing}"
    assert not twice, f"inputs that ended twice: {twice}"
    assert not unexpected, f"files in done/ or failed/ that nobody dropped (duplicate moves?): {unexpected}"
    for failed in box.files(box.failed):
        if not failed.name.endswith(".error.txt"):
            assert failed.with_name(failed.name + ".error.txt").is_file(), f"{failed.name} has no reason"
    assert box.files(box.inbox) == [], "inputs left in the inbox"
    processing = box.state / "processing"
    assert not processing.exists() or box.files(processing) == [], "claimed inputs left behind"


def assert_outputs_complete_and_unique(box: Sandbox) -> None:
    """Every image decodes and has a sidecar that matches it; no image rendered twice."""
    images = [p for p in box.files(box.outbox) if p.suffix in IMAGE_SUFFIXES]
    sidecars = box.files(box.outbox, "*.json")
    assert {p.with_suffix("") for p in images} == {p.with_suffix("") for p in sidecars}, (
        "an image without its sidecar, or a sidecar without its image"
    )
    rendered: Counter[tuple[int, int]] = Counter()
    for image in images:
        record = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
        data = image.read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["image_sha256"], f"{image.name} is not complete"
        with Image.open(image) as opened:
            opened.load()
        rendered[(record["job_id"], record["image_index"])] += 1
    twice = [key for key, n in rendered.items() if n > 1]
    assert not twice, f"(job, image) rendered more than once under different names: {twice}"
    assert temp_leftovers(box) == [], "temporary or partial files are visible"


def assert_journal_consistent(box: Sandbox) -> None:
    with sqlite3.connect(box.state / "journal.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        job_states = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        assert set(job_states) <= {"done", "failed"}, f"jobs left unfinished: {job_states}"
        input_states = dict(db.execute("SELECT state, count(*) FROM inputs GROUP BY state").fetchall())
        assert set(input_states) <= {"finished", "abandoned"}, f"inputs left mid-way: {input_states}"
        # A reservation may outlive a job that failed before writing it (``fooocusd retry`` reuses
        # the name), but only for a failed job, and never with a file behind it.
        dangling = db.execute(
            "SELECT o.path, j.state FROM outputs o JOIN jobs j ON j.id = o.job_id WHERE o.state != 'complete'"
        ).fetchall()
        assert all(state == "failed" for _, state in dangling), f"outputs never completed: {dangling}"
        assert not [p for p, _ in dangling if Path(p).exists()], "a planned output left a file behind"
        paths = [Path(row[0]) for row in db.execute("SELECT path FROM outputs WHERE state = 'complete'")]
        on_disk = {p for p in box.files(box.outbox) if p.suffix in IMAGE_SUFFIXES}
        assert set(paths) == on_disk, "the journal's outputs and the outbox's images differ"
        finals = [
            Path(row[0])
            for row in db.execute(
                "SELECT f.final_path FROM input_files f JOIN inputs i ON i.id = f.input_id"
                " WHERE i.state = 'finished'"
            )
        ]
        assert all(p.is_file() for p in finals), "a finished input is not where the journal says"
        finished = db.execute("SELECT count(*) FROM inputs WHERE state = 'finished'").fetchone()[0]
        ended = len([p for p in box.files(box.done)]) + len(
            [p for p in box.files(box.failed) if not p.name.endswith(".error.txt")]
        )
        assert finished == ended, "finished inputs in the journal and files in done/ + failed/ differ"
        # A done job has all its images; nothing beyond them.
        for job_id, spec_json in db.execute("SELECT id, spec_json FROM jobs WHERE state = 'done'"):
            wanted = json.loads(spec_json).get("images", 1)
            have = db.execute("SELECT count(*) FROM outputs WHERE job_id = ?", (job_id,)).fetchone()[0]
            assert have == wanted, f"job {job_id} is done with {have} of {wanted} images"
