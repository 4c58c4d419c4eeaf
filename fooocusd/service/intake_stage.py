"""From a settled drop to queued jobs: parse, validate, claim.

The order of a claim is what makes a crash at any instant harmless:

1. parse and validate everything (nothing is touched yet);
2. journal ``claiming``: the input, its files' source and destination, its jobs (not runnable);
3. move each file out of the inbox into ``<state>/processing/<key>/`` (atomic or copy+fsync);
4. journal ``claimed``: the jobs become runnable.

After a crash between 2 and 4, start-up reconciliation looks at the files: moved means the
claim completes, still in the inbox means the claim is dropped and intake sees the file again.
A job therefore never runs without its input safely claimed, and never runs twice.

Files a job names by path (``image = "photos/cat.png"``) are claimed with it, under
``processing/<key>/named/<inbox path>``: moved (role ``named``), or copied (role ``shared``) when
other job files waiting in the inbox name the same file; the last of them moves it.

Several daemons may share one inbox: the claim is a rename, so only one wins. The loser sees the
file vanish, puts back whatever it had already moved, and lets go quietly (its journal keeps an
``abandoned`` row for the record, with no jobs).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loguru import logger

from fooocusd.crashpoints import crashpoint
from fooocusd.engine.samplers import check_sampler
from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import InvalidInput
from fooocusd.intake.claim import copy_durably, digest_files, move_durably, move_to_unique
from fooocusd.intake.pairing import Drop
from fooocusd.intake.watcher import Ready
from fooocusd.jobs.drop_files import DropFiles, paths_named_by, resolve_written_path
from fooocusd.jobs.loader import error_report, load_drop, parse_job_file
from fooocusd.jobs.name_checks import check_job_names, with_preset
from fooocusd.jobs.preset_check import job_files_warning, missing_job_files
from fooocusd.jobs.presets import preset_for_subfolder
from fooocusd.jobs.resolve import fix_seed
from fooocusd.jobs.spec import JobSpec, image_attached_after_parsing
from fooocusd.jobs.txt_format import mistyped_options_unsaid
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import FileRole
from fooocusd.service.failing import quarantine
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings

NAMED_FOLDER = "named"  # inside a claim folder: the files the jobs name, by their inbox path


@dataclass(frozen=True)
class _ClaimFile:
    role: FileRole
    source: Path
    destination: Path

    @property
    def copied(self) -> bool:
        return self.role == "shared"


@dataclass
class IntakeCounts:
    queued_inputs: int = 0
    queued_jobs: int = 0
    failed_inputs: int = 0
    skipped_duplicates: int = 0


class IntakeStage:
    def __init__(
        self,
        settings: Settings,
        folders: Folders,
        journal: Journal,
        preset_dirs: list[Path],
        styles: StyleLibrary,
        *,
        on_refused: Callable[[str, str, list[Path]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.folders = folders
        self.journal = journal
        self.preset_dirs = preset_dirs
        self.styles = styles
        self.on_refused = on_refused
        """Told ``(relpath, reason, paths in failed/)`` of each file refused (the post-job hooks)."""
        self.counts = IntakeCounts()
        self._rng = random.SystemRandom()

    def take(self, drop: Drop) -> None:
        """Handle one settled drop. Never raises for bad input: it ends in failed/."""
        relpath = _first(drop).relpath
        if not _first(drop).path.exists():
            logger.info("{} is gone (another fooocusd took it, or it was removed); skipped", relpath)
            return
        # Files the drop may carry away: its own, and those it names that no other waiting job needs.
        movable = [part.path for part in drop.parts if part.path not in _shared_paths(drop)]
        if drop.is_orphan_mask:
            image_name = PurePosixPath(relpath).name.replace(".mask", "", 1)
            self.refuse(
                _first(drop).path,
                relpath,
                f"{relpath} is an inpaint mask, but no image with the same name arrived",
                f"put the image ({image_name}) next to it, then drop the mask again",
            )
            return
        pictures = DropFiles(self.folders.inbox, self.settings.intake.max_image_pixels)
        try:
            specs, warnings = self._validated_specs(drop, pictures)
        except InvalidInput as exc:
            if not _first(drop).path.exists():  # taken meanwhile: not ours to fail
                logger.info("{} vanished while it was read; skipped", relpath)
                return
            name = PurePosixPath(relpath).name
            said = exc.where in (name, "") or exc.where in exc.message
            where = "" if said else f" ({exc.where})"
            self._fail(movable, relpath, error_report(exc, name), exc.message + where)
            return
        files = self._claim_files(drop, pictures.named_files)
        sha256, size = digest_files([file.source for file in files])
        if self.settings.intake.duplicates == "skip" and self._seen_before(sha256):
            self._skip_duplicate([file.source for file in files if not file.copied], relpath)
            return
        if self._claim(drop, files, specs, sha256, size):
            for warning in warnings:
                logger.warning("{}{}", relpath, warning)

    def files_named_by(self, job_file: Path) -> list[Path]:
        """The inbox files the jobs of ``job_file`` name, as written (they may not exist yet).

        For the pairer, which holds those files back for the job file and waits for late ones.
        A job file that does not parse still names its files (they go to failed/ with it), as
        far as its ``image``/``mask`` lines can be read."""
        limit = self.settings.intake.max_job_file_bytes
        try:
            # a job may lack a prompt here, and load_drop warns about its lines: it checks them again
            with image_attached_after_parsing(), mistyped_options_unsaid():
                specs = parse_job_file(job_file, max_job_file_bytes=limit)
        except InvalidInput:
            written = _paths_written_in_broken_job_file(job_file, limit)
        else:
            written = [value for spec in specs for value in paths_named_by(spec)]
        return [resolve_written_path(value, job_file) for value in written]

    def _seen_before(self, sha256: str) -> bool:
        """Queued, running or succeeded before. A copy of an input that failed is run again."""
        return any(
            self.journal.input_outcome(previous.id) == "done"
            for previous in self.journal.find_inputs_by_sha256(sha256)
        )

    def refuse(self, path: Path, relpath: str, reason: str, hint: str) -> None:
        """Refuse a file that is not a job at all (conflict copy, unsupported type, FIFO...)."""
        report = f"{reason}\nHow to fix: {hint}\n"
        self._fail([path], relpath, report, reason)

    # -- steps ---------------------------------------------------------------------------------

    def _validated_specs(self, drop: Drop, pictures: DropFiles) -> tuple[list[JobSpec], list[str]]:
        """The drop's jobs, checked and with their seeds fixed, and a warning for each job that
        names model files that are not installed (ending in failed/ would be premature: see
        ``preset_check``)."""
        intake = self.settings.intake
        specs = load_drop(
            drop.spec.path if drop.spec else None,
            drop.image.path if drop.image else None,
            drop.mask.path if drop.mask else None,
            self.folders.inbox,
            max_job_file_bytes=intake.max_job_file_bytes,
            max_image_pixels=intake.max_image_pixels,
            default_image_action=self.settings.generation.image_action,
            use_recorded_prompt=self.settings.generation.use_recorded_prompt,
            files=pictures,
        )
        routed = preset_for_subfolder(_first(drop).relpath, self.preset_dirs)
        fixed: list[JobSpec] = []
        warnings: list[str] = []
        for number, spec in enumerate(specs, start=1):
            place = f"job {number}" if len(specs) > 1 else ""
            spec, preset, preset_name = with_preset(spec, routed, place, self.settings, self.preset_dirs)
            seeded = fix_seed(spec, self._rng)
            check_job_names(seeded, preset, preset_name, place, self.settings, self.styles, check_sampler)
            missing = missing_job_files(seeded, preset, self.settings, self.styles, self.folders.models)
            if missing:
                warnings.append(job_files_warning(missing, place))
            fixed.append(seeded)
        return fixed, warnings

    def _claim_files(self, drop: Drop, named: list[str]) -> list[_ClaimFile]:
        """The drop's own files, then each file its jobs name (once, in the order first named)."""
        claim_dir = self.folders.processing / uuid.uuid4().hex
        parts: list[tuple[FileRole, Ready | None]] = [
            ("spec", drop.spec),
            ("image", drop.image),
            ("mask", drop.mask),
        ]
        files = [_ClaimFile(role, part.path, claim_dir / part.path.name) for role, part in parts if part]
        own = {_normal(file.source) for file in files}
        shared = {_normal(path) for path in _shared_paths(drop)}
        for relative in named:
            source = self.folders.inbox / relative
            if _normal(source) in own:
                continue  # the job names its own paired image (image = "cat.png" in cat.toml)
            role: FileRole = "shared" if _normal(source) in shared else "named"
            files.append(_ClaimFile(role, source, claim_dir / NAMED_FOLDER / relative))
        return files

    def _claim(
        self, drop: Drop, files: list[_ClaimFile], specs: list[JobSpec], sha256: str, size: int
    ) -> bool:
        """Claim the drop's files and queue its jobs; False when a file vanished first."""
        claim_dir = files[0].destination.parent
        relpath = _first(drop).relpath
        input_id = self.journal.begin_claim(
            key=claim_dir.name,
            relpath=relpath,
            sha256=sha256,
            size=size,
            files=[(file.role, file.source, file.destination) for file in files],
            # Only what the file set: unset fields must keep deferring to the preset and config.
            specs=[(spec.model_dump_json(exclude_unset=True), spec.priority) for spec in specs],
        )
        crashpoint("after_begin_claim")
        claim_dir.mkdir(parents=True, exist_ok=True)
        placed: list[_ClaimFile] = []
        try:
            for file in files:
                file.destination.parent.mkdir(parents=True, exist_ok=True)
                (copy_durably if file.copied else move_durably)(file.source, file.destination)
                placed.append(file)
                crashpoint("after_claim_move")
        except FileNotFoundError as exc:
            _put_back(placed, claim_dir)
            gone = Path(exc.filename) if exc.filename else files[len(placed)].source
            self.journal.abandon_claim(input_id, f"{gone.name} vanished before it could be claimed")
            if placed:
                logger.info("{} vanished while {} was claimed; put its files back", gone.name, relpath)
            else:  # the usual case: another fooocusd on the same inbox took the file first
                logger.debug("{} was taken by someone else before this daemon could claim it", relpath)
            return False
        self.journal.complete_claim(input_id)
        crashpoint("after_complete_claim")
        self.counts.queued_inputs += 1
        self.counts.queued_jobs += len(specs)
        logger.info("queued {} ({} job{})", relpath, len(specs), "" if len(specs) == 1 else "s")
        return True

    def _fail(self, paths: list[Path], relpath: str, report: str, reason: str) -> None:
        """Move ``paths`` to failed/ with ``report`` as the error file; ``reason`` goes to the journal."""
        if not paths[0].exists() and not paths[0].is_symlink():
            logger.info("{} is gone (another fooocusd took it, or it was removed); not failed", relpath)
            return
        subdir = str(PurePosixPath(relpath).parent)
        destination = "" if subdir == "." else subdir
        moved = quarantine(
            paths, self.folders.failed, destination, report, self.settings.outbox.umask, reason=reason
        )
        if not moved:  # another fooocusd on the same inbox took it meanwhile: not ours to refuse
            return
        inbox_paths = [_inbox_relpath(path, self.folders.inbox) for path in paths]
        self.journal.record_refusal(
            relpath, _naming(relpath, reason), list(zip(inbox_paths, moved, strict=False))
        )
        if self.on_refused is not None:
            self.on_refused(relpath, reason, moved)
        self.counts.failed_inputs += 1

    def _skip_duplicate(self, paths: list[Path], relpath: str) -> None:
        subdir = str(PurePosixPath(relpath).parent)
        target = self.folders.done / ("" if subdir == "." else subdir)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            move_to_unique(path, target)
        self.journal.log_event("duplicate-skipped", relpath)
        self.counts.skipped_duplicates += 1
        logger.info("{} was processed before (same content); skipped into {}", relpath, target)


def _inbox_relpath(path: Path, inbox: Path) -> str:
    try:
        return path.relative_to(inbox).as_posix()
    except ValueError:  # not under the inbox as given (a resolved path): keep its name
        return path.name


def _naming(relpath: str, reason: str) -> str:
    """``reason`` led by the file's inbox path, once (most reasons already start with its name)."""
    name = PurePosixPath(relpath).name
    if reason.startswith((f"{name}:", f"{name} ")):
        return relpath + reason[len(name) :]
    return f"{relpath}: {reason}"


def _first(drop: Drop) -> Ready:
    first = drop.spec or drop.image or drop.mask
    assert first is not None, "a drop has at least one file"
    return first


def _shared_paths(drop: Drop) -> set[Path]:
    return {named.ready.path for named in drop.named if named.shared}


def _normal(path: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


_NAMING_LINE = re.compile(r"""^\s*(?:image|mask)\s*[:=]\s*["']?([^"'#\n]+?)["']?\s*$""", re.MULTILINE)


def _paths_written_in_broken_job_file(job_file: Path, limit: int) -> list[str]:
    """``image``/``mask`` values of a job file the parsers refused (best effort, never raises)."""
    try:
        if job_file.stat().st_size > limit:
            return []
        text = job_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [match.group(1).strip() for match in _NAMING_LINE.finditer(text)]


def _put_back(placed: list[_ClaimFile], claim_dir: Path) -> None:
    """Undo a claim that lost a file half-way: moved files return to the inbox, copies go."""
    for file in reversed(placed):
        if file.copied:
            file.destination.unlink(missing_ok=True)
        else:
            file.source.parent.mkdir(parents=True, exist_ok=True)
            move_to_unique(file.destination, file.source.parent, file.source.name)
    shutil.rmtree(claim_dir, ignore_errors=True)
