"""From a settled drop to queued jobs: parse, validate, claim.

The order of a claim is what makes a crash at any instant harmless:

1. parse and validate everything (nothing is touched yet);
2. journal ``claiming``: the input, its files' source and destination, its jobs (not runnable);
3. move each file out of the inbox into ``<state>/processing/<key>/`` (atomic or copy+fsync);
4. journal ``claimed``: the jobs become runnable.

After a crash between 2 and 4, start-up reconciliation looks at the files: moved means the
claim completes, still in the inbox means the claim is dropped and intake sees the file again.
A job therefore never runs without its input safely claimed, and never runs twice.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loguru import logger

from fooocusd.crashpoints import crashpoint
from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.intake.claim import move_durably, move_to_unique
from fooocusd.intake.pairing import Drop
from fooocusd.jobs.loader import error_report, load_drop
from fooocusd.jobs.presets import load_preset, preset_for_subfolder
from fooocusd.jobs.resolve import fix_seed
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.service.failing import quarantine
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings

ACCEPTED = ".txt, .toml, .png, .jpg, .jpeg, .webp"


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
    ) -> None:
        self.settings = settings
        self.folders = folders
        self.journal = journal
        self.preset_dirs = preset_dirs
        self.styles = styles
        self.counts = IntakeCounts()
        self._rng = random.SystemRandom()

    def take(self, drop: Drop) -> None:
        """Handle one settled drop. Never raises for bad input: it ends in failed/."""
        files = [part for part in (drop.spec, drop.image, drop.mask) if part is not None]
        relpath = files[0].relpath
        if drop.is_orphan_mask:
            image_name = PurePosixPath(relpath).name.replace(".mask", "", 1)
            self.refuse(
                files[0].path,
                relpath,
                f"{relpath} is an inpaint mask, but no image with the same name arrived",
                f"put the image ({image_name}) next to it, then drop the mask again",
            )
            return
        try:
            specs = self._validated_specs(drop)
        except InvalidInput as exc:
            self._fail([part.path for part in files], relpath, error_report(exc, PurePosixPath(relpath).name))
            return
        sha256, size = _digest([part.path for part in files])
        if self.settings.intake.duplicates == "skip" and self._seen_before(sha256):
            self._skip_duplicate([part.path for part in files], relpath)
            return
        self._claim(drop, specs, sha256, size)

    def _seen_before(self, sha256: str) -> bool:
        """Queued, running or succeeded before. A copy of an input that failed is run again."""
        return any(
            self.journal.input_outcome(previous.id) == "done"
            for previous in self.journal.find_inputs_by_sha256(sha256)
        )

    def refuse(self, path: Path, relpath: str, reason: str, hint: str) -> None:
        """Refuse a file that is not a job at all (conflict copy, unsupported type, FIFO...)."""
        report = f"{reason}\nHow to fix: {hint}\n"
        self._fail([path], relpath, report)

    # -- steps ---------------------------------------------------------------------------------

    def _validated_specs(self, drop: Drop) -> list[JobSpec]:
        intake = self.settings.intake
        specs = load_drop(
            drop.spec.path if drop.spec else None,
            drop.image.path if drop.image else None,
            drop.mask.path if drop.mask else None,
            self.folders.inbox,
            max_job_file_bytes=intake.max_job_file_bytes,
            max_image_pixels=intake.max_image_pixels,
            default_image_action=self.settings.generation.image_action,
        )
        routed = preset_for_subfolder(_first(drop).relpath, self.preset_dirs)
        fixed: list[JobSpec] = []
        for number, spec in enumerate(specs, start=1):
            if spec.preset is None and routed is not None:
                spec = spec.model_copy(update={"preset": routed})
            preset_name = spec.preset or self.settings.generation.preset
            try:
                preset = load_preset(preset_name, self.preset_dirs)
            except ConfigError as exc:  # the preset file itself is broken (edited while running)
                raise InvalidInput(exc.message, where=exc.where or "preset", hint=exc.hint) from exc
            except InvalidInput as exc:
                where = f"job {number}" if len(specs) > 1 else "preset"
                raise InvalidInput(exc.message, where=where, hint=exc.hint) from exc
            styles = _first_set(spec.styles, preset.styles, self.settings.generation.styles)
            try:
                self.styles.canonical_names(styles)
            except InvalidInput as exc:
                where = f"job {number}, styles" if len(specs) > 1 else "styles"
                raise InvalidInput(exc.message, where=where, hint=exc.hint) from exc
            fixed.append(fix_seed(spec, self._rng))
        return fixed

    def _claim(self, drop: Drop, specs: list[JobSpec], sha256: str, size: int) -> None:
        key = uuid.uuid4().hex
        claim_dir = self.folders.processing / key
        parts = [("spec", drop.spec), ("image", drop.image), ("mask", drop.mask)]
        files = [(role, part.path, claim_dir / part.path.name) for role, part in parts if part is not None]
        relpath = _first(drop).relpath
        input_id = self.journal.begin_claim(
            key=key,
            relpath=relpath,
            sha256=sha256,
            size=size,
            files=files,
            # Only what the file set: unset fields must keep deferring to the preset and config.
            specs=[(spec.model_dump_json(exclude_unset=True), spec.priority) for spec in specs],
        )
        crashpoint("after_begin_claim")
        claim_dir.mkdir(parents=True, exist_ok=True)
        try:
            for _role, source, destination in files:
                move_durably(source, destination)
                crashpoint("after_claim_move")
        except FileNotFoundError:
            self.journal.abandon_claim(input_id, "the file vanished before it could be claimed")
            logger.info("{} vanished before it was claimed; it will be taken when it returns", relpath)
            return
        self.journal.complete_claim(input_id)
        crashpoint("after_complete_claim")
        self.counts.queued_inputs += 1
        self.counts.queued_jobs += len(specs)
        logger.info("queued {} ({} job{})", relpath, len(specs), "" if len(specs) == 1 else "s")

    def _fail(self, paths: list[Path], relpath: str, report: str) -> None:
        subdir = str(PurePosixPath(relpath).parent)
        quarantine(
            paths, self.folders.failed, "" if subdir == "." else subdir, report, self.settings.outbox.umask
        )
        self.journal.log_event("refused", f"{relpath}: {report.splitlines()[0]}")
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


def _first_set(*candidates: list[str] | None) -> list[str]:
    """Styles come from the job, else its preset, else the config (an empty list counts as set)."""
    return next((list(c) for c in candidates if c is not None), [])


def _first(drop: Drop):  # type: ignore[no-untyped-def]
    return drop.spec or drop.image or drop.mask


def _digest(paths: list[Path]) -> tuple[str, int]:
    """One sha256 over all files of a drop, so a re-submitted pair is recognised as a whole."""
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size
