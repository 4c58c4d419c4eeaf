"""Start-up reconciliation: make the folders and the journal agree after any crash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from loguru import logger

from fooocusd.intake.claim import copy_durably, move_durably
from fooocusd.journal.journal import DEFAULT_MAX_CRASHES, Journal
from fooocusd.outbox.atomic import cleanup_stale_temps, set_temp_owner
from fooocusd.service.finisher import finish_recorded_moves
from fooocusd.service.folders import Folders
from fooocusd.service.requeue import restore_input_files

_SHARED_TEMP_MIN_AGE_SECONDS = 3600.0


def instance_tag(state: Path) -> str:
    """A short tag naming this daemon instance: its state folder (each instance has its own journal)."""
    return hashlib.sha256(str(state.resolve()).encode("utf-8")).hexdigest()[:8]


def reconcile(journal: Journal, folders: Folders, *, max_crashes: int = DEFAULT_MAX_CRASHES) -> None:
    tag = instance_tag(folders.state)
    set_temp_owner(tag)  # before anything is published, so our own leftovers are recognisable
    _settle_claims(journal)
    _settle_finishes(journal)
    for source in journal.inputs_reopening():
        restore_input_files(journal, source)
    requeued = journal.recover_stale_jobs(max_crashes=max_crashes, at_startup=True)
    if requeued:
        logger.warning("took back {} job(s) interrupted by a crash", len(requeued))
    _settle_outputs(journal)
    for folder in {folders.outbox, folders.processing, folders.done, folders.failed}:
        # Other daemons sharing outbox/done/failed may be writing a temp right now; processing/ is ours.
        min_age = 0.0 if folder == folders.processing else _SHARED_TEMP_MIN_AGE_SECONDS
        # One walk that looks only at temp names: an outbox of 100,000 files took 3.5 s when every
        # entry was stat'ed to find the subfolders, 0.36 s this way.
        cleanup_stale_temps(folder, min_age_seconds=min_age, own_tag=tag, recursive=True)


def _settle_claims(journal: Journal) -> None:
    for source in journal.claims_in_progress():
        files = journal.files_for_input(source.id)
        pending = [f for f in files if not Path(f.claimed_path).exists()]
        movable = [f for f in pending if Path(f.source_path).exists()]
        if pending and len(movable) != len(pending):
            journal.abandon_claim(source.id, "a file of this input vanished during a crash")
            logger.warning("dropped the claim of {}: a file vanished", source.relpath)
            continue
        if pending and len(pending) == len(files):
            # Nothing moved yet: forget the claim; intake will find the file again.
            journal.abandon_claim(source.id, "interrupted before the file was moved; it is taken again")
            continue
        for file in movable:
            Path(file.claimed_path).parent.mkdir(parents=True, exist_ok=True)
            # 'shared': other job files in the inbox name it too, so the claim holds a copy.
            place = copy_durably if file.role == "shared" else move_durably
            place(Path(file.source_path), Path(file.claimed_path))
        for file in files:
            # A cross-filesystem move that crashed after the copy leaves the source behind.
            if file.role != "shared" and Path(file.claimed_path).exists() and Path(file.source_path).exists():
                Path(file.source_path).unlink()
        journal.complete_claim(source.id)
        logger.info("completed the interrupted claim of {}", source.relpath)


def _settle_finishes(journal: Journal) -> None:
    for source in journal.inputs_finishing():
        try:
            finish_recorded_moves(journal, source)
        except OSError as exc:  # done/ full or away: the running daemon's finisher tries again
            logger.warning("could not yet move {} out of processing/: {}", source.relpath, exc)


def _settle_outputs(journal: Journal) -> None:
    """Planned images: keep those whose sidecar landed, delete those without one."""
    for row in journal.planned_outputs():
        image = Path(row.path)
        sidecar = image.with_suffix(".json")
        if sidecar.exists() and image.exists():
            try:
                recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("image_sha256")
            except (OSError, ValueError):
                recorded = None
            with image.open("rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
            if recorded == actual:
                journal.complete_output(row.job_id, row.image_index, actual)
                continue
        for path in (sidecar, image):
            if path.exists():
                path.unlink()
                logger.info("removed incomplete output {}", path)
