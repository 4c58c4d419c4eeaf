"""The GPU worker: takes one job at a time from the journal and renders its images.

Each image is planned in the journal (its name reserved) before it is generated, and marked
complete only once its sidecar is on disk, so a crash at any point re-renders exactly the
images that are missing, under the same names, and never duplicates one.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger
from PIL import Image

from fooocusd.crashpoints import crashpoint
from fooocusd.engine.base import Engine, GenerationRequest
from fooocusd.engine.expansion import PromptExpansion, apply_expansion, expansion_record
from fooocusd.engine.image_actions import run_image_action, steps_for
from fooocusd.engine.loras import with_inline_loras
from fooocusd.engine.prompt_syntax import WildcardLibrary, expand_prompts
from fooocusd.engine.styles import StyleLibrary, Workloads, compose_workloads
from fooocusd.errors import FooocusdError, Interrupted, InvalidInput, OutOfMemory, TransientError
from fooocusd.jobs.preset_check import check_preset_models
from fooocusd.jobs.presets import load_preset
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.outbox.metadata import build_record
from fooocusd.outbox.naming import choose_free_name, name_fields, render_name
from fooocusd.outbox.writer import extension_for, write_image_with_sidecar
from fooocusd.service.folders import Folders
from fooocusd.service.image_inputs import load_image_input
from fooocusd.service.image_prompt_inputs import (
    image_prompt_fields,
    load_image_prompts,
    save_control_images,
    take_control_images,
    wants_control_images,
)
from fooocusd.service.worker_events import NoWorkerEvents, WorkerEvents
from fooocusd.settings import Settings

ProgressSink = Callable[[str, int, int], None]
"""``sink(label, done_steps, total_steps)`` for terminal progress bars."""

_NAME_RACE_RETRIES = 5
_HEARTBEAT_EVERY = 0.5


@dataclass
class WorkerCounts:
    jobs_done: int = 0
    jobs_failed: int = 0
    images_written: int = 0


class Worker:
    def __init__(
        self,
        settings: Settings,
        folders: Folders,
        journal: Journal,
        engine: Engine,
        preset_dirs: list[Path],
        *,
        styles: StyleLibrary,
        stop_now: threading.Event,
        stop_after_image: threading.Event | None = None,
        progress_sink: ProgressSink | None = None,
        events: WorkerEvents | None = None,
        expansion: PromptExpansion | None = None,
    ) -> None:
        self.settings = settings
        self.folders = folders
        self.journal = journal
        self.engine = engine
        self.preset_dirs = preset_dirs
        self.styles = styles
        self.stop_now = stop_now
        self.stop_after_image = stop_after_image or threading.Event()
        self.progress_sink = progress_sink
        self.expansion = expansion  # "Fooocus V2"; None: unavailable
        self.counts = WorkerCounts()
        self.events: WorkerEvents = events if events is not None else NoWorkerEvents()

    def run_one(self) -> bool:
        """Run the next runnable job, if any. Returns whether one was run."""
        job = self.journal.claim_next_job(self.settings.journal.lease_seconds)
        if job is None:
            return False
        self.events.on_job_started(job)
        source = self.journal.get_input(job.input_id)
        label = f"{source.relpath}" + (f" #{job.seq + 1}" if job.seq else "")
        logger.info("running {} (attempt {})", label, job.attempts)
        try:
            self._render(job, source, label)
        except Interrupted:
            current = self.journal.get_job(job.id)
            if current is not None and current.state == "running":
                self.journal.release_interrupted(job.id)
                logger.info("{} interrupted by shutdown; it stays queued", label)
            else:
                logger.info("{} cancelled", label)
        except InvalidInput as exc:
            self._fail(job.id, label, exc.explain())
        except OutOfMemory as exc:
            self.engine.free_memory()
            self._retry_or_fail(job, label, exc.explain())
        except TransientError as exc:
            self._retry_or_fail(job, label, exc.explain())
        except FooocusdError as exc:
            self._fail(job.id, label, exc.explain())
        except Exception as exc:  # an engine bug must not kill the daemon; retry, then fail
            logger.exception("unexpected error in {}", label)
            self._retry_or_fail(job, label, f"internal error: {type(exc).__name__}: {exc}")
        return True

    # -- one job -------------------------------------------------------------------------------

    def _render(self, job, source, label: str) -> None:  # type: ignore[no-untyped-def]
        spec = JobSpec.model_validate_json(job.spec_json)
        image_input = (
            load_image_input(spec, source, self.folders, self.settings) if spec.image is not None else None
        )
        image_prompts = load_image_prompts(spec, source, self.folders, self.settings)
        preset = load_preset(spec.preset or self.settings.generation.preset, self.preset_dirs)
        check_preset_models(preset, spec, self.folders.models, self.settings.engine.model)
        requests = resolve_requests(spec, preset, self.settings.generation, self.settings.engine.model)
        if image_input is not None:
            action, given = image_input.job.action, spec.steps is not None
            requests = [
                dataclasses.replace(r, steps=steps_for(action, r.performance, r.steps, steps_given=given))
                for r in requests
            ]
        if image_prompts:
            requests = [dataclasses.replace(r, image_prompts=image_prompts) for r in requests]
        wildcards = WildcardLibrary(self.folders.wildcards)  # read per job: new files count at once
        styled = [self._with_styles(request, index, wildcards) for index, request in enumerate(requests)]
        requests = [request for request, _ in styled]
        relpath = PurePosixPath(source.relpath)
        out_dir = self.folders.outbox / relpath.parent
        stem = spec.name or relpath.stem
        if spec.name is None and len(self.journal.jobs_for_input(source.id)) > 1:
            stem = f"{stem}-{job.seq + 1}"  # the jobs of one file get names of their own
        fmt = spec.output_format or self.settings.outbox.format
        done = {row.image_index: row for row in self.journal.outputs_for(job.id)}
        total_steps = sum(request.steps for request in requests)
        steps_before = 0
        for index, request in enumerate(requests):
            row = done.get(index)
            if row is not None and row.state == "complete":
                steps_before += request.steps
                continue
            if self.stop_after_image.is_set():
                raise Interrupted("stopping: the remaining images stay queued")
            target = (
                Path(row.path)
                if row is not None
                else self._plan_name(job.id, index, out_dir, stem, fmt, request, len(requests))
            )
            _remove_orphan(target)
            crashpoint("before_generate")
            reporter = _Heartbeat(self, job.id, label, steps_before, total_steps)
            if image_input is None:
                image = self.engine.generate(request, progress=reporter, should_stop=reporter.should_stop)
            else:
                image = run_image_action(
                    self.engine,
                    request,
                    image_input.job,
                    image_input.context,
                    progress=reporter,
                    should_stop=reporter.should_stop,
                )
            control_images = take_control_images(image)
            record = build_record(
                job_id=job.id,
                input_name=source.relpath,
                input_sha256=source.sha256,
                request=request,
                generated=image,
                image_index=index,
                image_count=len(requests),
                output_name=target.name,
                fmt=fmt,
            )
            workloads = styled[index][1]
            record.update(
                styles_applied=workloads.styles_applied,
                adaptive_cfg=request.adaptive_cfg,
                adm_guidance=[
                    request.adm_scaler_positive,
                    request.adm_scaler_negative,
                    request.adm_scaler_end,
                ],
                clip_skip=request.clip_skip,
                **expansion_record(workloads),
                preset=preset.name,
                model_file=image.model_path,
                requested_width=request.width,
                requested_height=request.height,
            )
            if image_input is not None:
                record.update(image_input.sidecar_fields(image))
            record.update(image_prompt_fields(image))
            if control_images and wants_control_images(spec, self.settings):
                record["control_images"] = save_control_images(
                    control_images, target, umask=self.settings.outbox.umask
                )
            sha256 = self._publish(
                job.id, index, image.image, record, target, fmt, stem, request, len(requests)
            )
            crashpoint("after_output_written")
            self.journal.complete_output(job.id, index, sha256)
            self.events.on_image_done(job.id, image, target)
            crashpoint("after_output_recorded")
            self.counts.images_written += 1
            steps_before += request.steps
            logger.info("wrote {}", target)
        if self.journal.finish_job(job.id, "done", None):  # False: it was cancelled meanwhile
            self.events.on_job_finished(job.id, "done", None)
        crashpoint("after_job_done")
        self.counts.jobs_done += 1

    def _with_styles(
        self, request: GenerationRequest, image_index: int, wildcards: WildcardLibrary
    ) -> tuple[GenerationRequest, Workloads]:
        """Each image composes its own workloads from its own ``random.Random(seed)``.

        Fooocus's order: inline LoRA tags (into ``request.loras``), then wildcards, then arrays (by
        ``image_index``), then styles ("Random Style" draws from the same rng, after wildcards).
        """
        request = with_inline_loras(request)
        rng = random.Random(request.seed)
        expanded = expand_prompts(
            request.prompt,
            request.extra_prompts,
            request.negative,
            wildcards=wildcards,
            rng=rng,
            image_index=image_index,
            wildcards_in_order=request.wildcards_in_order,
        )
        workloads = compose_workloads(
            expanded.prompt,
            expanded.extra_prompts,
            expanded.negative,
            request.styles,
            self.styles,
            rng,
        )
        # Each image's own expansion, seeded by its seed, becomes its last positive workload.
        workloads = apply_expansion(workloads, self.expansion, request.seed)
        styled = dataclasses.replace(
            request,
            prompt=expanded.prompt,  # the sidecar records the text this image really used
            extra_prompts=expanded.extra_prompts,
            negative=expanded.negative,
            positive_workloads=tuple(workloads.positive),
            negative_workloads=tuple(workloads.negative),
        )
        return styled, workloads

    def _publish(
        self,
        job_id: int,
        index: int,
        image: Image.Image,
        record: dict[str, Any],
        target: Path,
        fmt: str,
        stem: str,
        request: GenerationRequest,
        count: int,
    ) -> str:
        """Publish under the reserved name; if someone took it meanwhile, reserve another."""
        outbox = self.settings.outbox
        for _ in range(_NAME_RACE_RETRIES):
            try:
                _, _, sha256 = write_image_with_sidecar(
                    image,
                    record,
                    target,
                    fmt=fmt,
                    quality=outbox.quality,
                    embed_metadata=outbox.embed_metadata,
                    umask=outbox.umask,
                )
                return sha256
            except FileExistsError:
                target = self._plan_name(
                    job_id, index, target.parent, stem, fmt, request, count, replace=True
                )
                record["output_file"] = target.name
        raise TransientError(f"could not find a free output name in {target.parent}")

    def _plan_name(
        self,
        job_id: int,
        index: int,
        out_dir: Path,
        stem: str,
        fmt: str,
        request: GenerationRequest,
        count: int = 1,
        *,
        replace: bool = False,
    ) -> Path:
        fields = name_fields(
            stem=stem,
            seed=request.seed,
            index=index,
            count=count,
            job_id=job_id,
            finished=datetime.now(),
            width=request.width,
            height=request.height,
            model=request.model,
            performance=request.performance,
            prompt=request.prompt,
        )
        base = render_name(self.settings.outbox.name_template, fields)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = choose_free_name(out_dir, base, extension_for(fmt), taken=self.journal.is_path_reserved)
        self.journal.plan_output(job_id, index, path, replace=replace)
        return path

    # -- outcomes ------------------------------------------------------------------------------

    def _fail(self, job_id: int, label: str, error: str) -> None:
        if self.journal.finish_job(job_id, "failed", error):
            self.events.on_job_finished(job_id, "failed", error)
        self.counts.jobs_failed += 1
        logger.error("{} failed: {}", label, error.splitlines()[0])

    def _retry_or_fail(self, job, label: str, error: str) -> None:  # type: ignore[no-untyped-def]
        settings = self.settings.journal
        if job.attempts >= settings.max_attempts:
            self._fail(job.id, label, f"{error}\n(gave up after {job.attempts} attempts)")
            return
        delay = settings.retry_backoff_seconds * 2 ** (job.attempts - 1)
        self.journal.retry_later(job.id, delay, error)
        logger.warning("{} will be retried in {:.0f} s: {}", label, delay, error.splitlines()[0])


class _Heartbeat:
    """Per-step progress: throttled journal heartbeats, terminal progress, cancel detection."""

    def __init__(self, worker: Worker, job_id: int, label: str, offset: int, total: int) -> None:
        self.worker = worker
        self.job_id = job_id
        self.label = label
        self.offset = offset
        self.total = total
        self.cancelled = False
        self._last = 0.0

    def __call__(self, step: int, _steps: int) -> None:
        done = self.offset + step
        now = time.monotonic()
        if now - self._last >= _HEARTBEAT_EVERY or step == _steps:
            self._last = now
            alive = self.worker.journal.heartbeat(
                self.job_id, done, self.total, self.worker.settings.journal.lease_seconds
            )
            self.cancelled = not alive
        if self.worker.progress_sink is not None:
            self.worker.progress_sink(self.label, done, self.total)
        self.worker.events.on_step(self.job_id, step, _steps)

    def should_stop(self) -> bool:
        return self.cancelled or self.worker.stop_now.is_set()


def _remove_orphan(target: Path) -> None:
    """An image without its sidecar is a leftover of a crash: it is rendered again."""
    sidecar = target.with_suffix(".json")
    if target.exists() and not sidecar.exists():
        target.unlink()
