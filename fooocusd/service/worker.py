"""The GPU worker: takes jobs from the journal and renders their images.

Each image is planned in the journal (its name reserved) before it is generated, and marked
complete only once its sidecar is on disk, so a crash at any point re-renders exactly the
images that are missing, under the same names, and never duplicates one.

Two things keep the GPU busy:

* Batching: pending images whose requests share the engine's ``batch_key`` render in one UNet
  batch, up to ``batch_limit(engine)``; the images of the next queued jobs may join a batch.
* Background writes: a finished image is encoded, written and recorded by the publisher thread
  while the next ones render. Up to one batch of publications is outstanding, so a batch's images
  are all handed over at once; a job is finished only after all of its publications succeeded,
  and a failed one is charged to its own job.
* Expansions together: before a claim, the next queued jobs' prompt expansions run in one go, a
  batch's worth per model step (``_expand_upcoming``); with ``engine.expand_ahead = "on"`` they are
  handed to a thread of their own instead (``expansion_ahead.py``), while the current batch renders.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from loguru import logger
from PIL import Image

from fooocusd.crashpoints import crashpoint
from fooocusd.engine import batching
from fooocusd.engine.base import Engine, GeneratedImage, GenerationRequest
from fooocusd.engine.devices import context_lost
from fooocusd.engine.expansion import PromptExpansion
from fooocusd.engine.image_actions import run_image_action
from fooocusd.engine.prompt_syntax import WildcardLibrary
from fooocusd.engine.styles import StyleLibrary, Workloads
from fooocusd.errors import (
    DiskWait,
    FooocusdError,
    GpuLost,
    Interrupted,
    InvalidInput,
    ModelNotFound,
    OutOfMemory,
    Paused,
    TransientError,
)
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import JobRow, JobState, job_label
from fooocusd.outbox.atomic import describe_os_error, ensure_folder
from fooocusd.outbox.folder_disk import FolderDisk
from fooocusd.outbox.folder_names import FolderNames
from fooocusd.outbox.naming import choose_free_name, name_fields, render_name
from fooocusd.outbox.writer import extension_for, write_image_with_sidecar
from fooocusd.service.batch_plan import BatchItem, first_key, take_matching
from fooocusd.service.batch_progress import BatchProgress
from fooocusd.service.expansion_ahead import REMEMBERED_OFFERS, ExpansionAhead, expands_ahead
from fooocusd.service.folders import Folders
from fooocusd.service.image_prompt_inputs import (
    save_control_images,
    take_control_images,
    wants_control_images,
)
from fooocusd.service.job_prep import (
    PreparedJob,
    PrepContext,
    expand_ahead,
    missing_files_note,
    prepare_job,
    with_styles,
)
from fooocusd.service.publisher import Publisher
from fooocusd.service.worker_events import NoWorkerEvents, WorkerEvents
from fooocusd.settings import OutboxSettings, Settings
from fooocusd.space_wait import FullDiskLog, retry_until_room

ProgressSink = Callable[[str, int, int], None]
"""``sink(label, done_steps, total_steps)`` for terminal progress bars."""

_NAME_RACE_RETRIES = 5
R = TypeVar("R")


@dataclass
class WorkerCounts:
    jobs_done: int = 0
    jobs_failed: int = 0
    images_written: int = 0


@dataclass(frozen=True)
class _Publication:
    """What the worker needs back when a publication settles."""

    run: PreparedJob
    index: int
    generated: GeneratedImage


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
        paused: threading.Event | None = None,
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
        self.paused = paused or threading.Event()
        """Set while ``fooocusd pause`` holds the queue: no job is claimed, and the running one
        goes back to the queue after its current image."""
        self.progress_sink = progress_sink
        self.expansion = expansion  # "Fooocus V2"; None: unavailable
        self.counts = WorkerCounts()
        self.events: WorkerEvents = events if events is not None else NoWorkerEvents()
        self.claimed: list[PreparedJob] = []
        """Jobs this worker holds (state 'running') whose outcome is not recorded yet, in order."""
        self._publisher: Publisher[_Publication] | None = None
        self._expansion_ahead: ExpansionAhead | None = None
        self._collected: OrderedDict[int, None] = OrderedDict()
        """Jobs whose expansions ``_expand_upcoming`` already ran (each job once)."""
        self._folder_names = FolderNames()
        """The output folders' names, kept between name choices (``_free_name``)."""
        self._full_outbox_log = FullDiskLog("the outbox")
        self._outbox_disk = FolderDisk(folders.outbox)
        self.may_claim: Callable[[], bool] = lambda: True
        """False while the daemon has a reload waiting: no new job is claimed until it is applied."""

    # -- the public loop -----------------------------------------------------------------------

    def run_one(self) -> bool:
        """Run the next runnable job, if any. Returns whether there was anything to do.

        The job's last images may still be publishing when this returns; they are settled once the
        publisher has no room for the next image, or when the worker goes idle (no further job) or
        closes.
        """
        try:
            head = self._next_to_render()
            if head is None:
                job = self._claim()
                if job is None:
                    return self._settle_all()
                head = self._admit(job)
            if head is not None:
                self._render_job(head)
            self._look_ahead()
        except Interrupted as exc:
            self._release_all(exc)
        return True

    def adopt_settings(self, settings: Settings, styles: StyleLibrary) -> None:
        """A reload, between ``run_one`` calls: jobs held ahead that have not started rendering are
        prepared again with the new settings, presets and styles; a started job keeps its own."""
        self.settings, self.styles = settings, styles
        for run in list(self.claimed):
            if run.started or run.ended:
                continue
            try:
                fresh = prepare_job(run.job, run.source, self._prep_context())
            except Exception as exc:
                self._end_run(run, exc)
                continue
            self.claimed[self.claimed.index(run)] = fresh

    def close(self) -> None:
        """Before stopping: settle the last publication, put every job still held back in the queue."""
        self._release_all()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._expansion_ahead is not None:
            self._expansion_ahead.close()
            self._expansion_ahead = None

    # -- taking jobs ---------------------------------------------------------------------------

    def _next_to_render(self) -> PreparedJob | None:
        return next((run for run in self.claimed if not run.ended and run.to_render), None)

    def _claim(self) -> JobRow | None:
        if self.paused.is_set() or not self.may_claim():
            return None
        self._expand_upcoming()
        return self.journal.claim_next_job(self.settings.journal.lease_seconds)

    def _expand_upcoming(self) -> None:
        """Before a claim: the "Fooocus V2" expansions of the jobs claimed next, run together (one
        model step advances a batch's worth of them), so that preparing each job finds its own
        done. Not with ``expand_ahead``, whose thread runs them."""
        expansion = self.expansion
        ahead = expands_ahead(self.settings.engine.expand_ahead, expansion)
        if expansion is None or not expansion.enabled or ahead:
            return
        context = self._prep_context()
        try:  # only ever a head start: whatever fails here, each job meets when it is prepared
            fresh = self._to_expand_together(max(2, batching.batch_limit(self.engine)))
            if not fresh:
                return
            for job in fresh:
                self._collected[job.id] = None
            while len(self._collected) > REMEMBERED_OFFERS:
                self._collected.popitem(last=False)
            with expansion.collecting() as pairs:  # expand_ahead only records the pairs in here
                for job in fresh:
                    expand_ahead(job, context)
            if pairs:
                expansion.expand_together(pairs)
        except FooocusdError as exc:  # out of memory and the like
            logger.debug("expanding the next jobs together skipped: {}", exc.explain().splitlines()[0])
        except Exception:
            logger.opt(exception=True).warning("expanding the next jobs together failed")

    def _to_expand_together(self, group: int) -> list[JobRow]:
        """The jobs to expand now: none while the next ``group`` are done; then the fresh ones of the
        next two groups, cut to whole groups unless the queue ends there. A model run expands a
        group's worth of prompts for about the price of one, so runs of one or two prompts, as a
        window sliding one job at a time would give, cost a whole run each (an H100's queue of
        "Fooocus V2" jobs paid 12 % for its expansions so, against ~5 % in whole groups)."""
        upcoming = self.journal.next_runnable_jobs(2 * group)
        if all(job.id in self._collected for job in upcoming[:group]):
            return []
        fresh = [job for job in upcoming if job.id not in self._collected]
        if len(upcoming) == 2 * group:  # more may be queued behind: whole groups only
            fresh = fresh[: max(group, len(fresh) // group * group)]
        return fresh

    def _admit(self, job: JobRow) -> PreparedJob | None:
        """Prepare a claimed job; None when it ended at once (its own error, or nothing left to render)."""
        self.events.on_job_started(job)
        source = self.journal.get_input(job.input_id)
        label = job_label(job, source)
        logger.info("running {} (attempt {})", label, job.attempts)
        try:
            run = prepare_job(job, source, self._prep_context())
        except Exception as exc:
            self._record_outcome(job, label, exc)
            return None
        self.claimed.append(run)
        if not run.to_publish:
            self._finish(run)
            return None
        return run

    def _look_ahead(self) -> None:
        """Claim the next job now, so the last publication overlaps its first render; idle: settle."""
        if self._next_to_render() is not None:
            return
        job = None if self.stop_after_image.is_set() else self._claim()
        if job is None:
            self._settle_all()
        else:
            self._admit(job)

    def _offer_next_jobs(self) -> None:
        """Before a render: the jobs claimed next get their prompt expansions run meanwhile."""
        wanted = expands_ahead(self.settings.engine.expand_ahead, self.expansion)
        ahead = self._expansion_ahead
        if not wanted:
            if ahead is not None:
                ahead.close()
                self._expansion_ahead = None
            return
        if ahead is None:
            assert self.expansion is not None
            ahead = self._expansion_ahead = ExpansionAhead(self.expansion)
        limit = max(2, batching.batch_limit(self.engine))
        ahead.offer(self.journal.next_runnable_jobs(limit), self._prep_context())

    def _prep_context(self) -> PrepContext:
        return PrepContext(
            self.settings, self.folders, self.journal, self.preset_dirs, self.styles, self.expansion
        )

    def _with_styles(
        self, request: GenerationRequest, image_index: int, wildcards: WildcardLibrary
    ) -> tuple[GenerationRequest, Workloads]:
        return with_styles(request, image_index, wildcards, self.styles, self.expansion)

    # -- rendering -----------------------------------------------------------------------------

    def _render_job(self, head: PreparedJob) -> None:
        while not head.ended and head.to_render:
            if self.stop_after_image.is_set():
                raise Interrupted("stopping: the remaining images stay queued")
            if self.paused.is_set():
                raise Paused("paused: the remaining images stay queued")
            self._render_batch(self._gather(head))

    def _key_of(self, request: GenerationRequest) -> Hashable | None:
        return batching.batch_key(self.engine, request)

    def _gather(self, head: PreparedJob) -> list[BatchItem]:
        """The head job's next images, topped up with the next images of other jobs that fit."""
        limit = batching.batch_limit(self.engine)
        key = first_key(head, self._key_of)
        items = take_matching(head, key, limit, self._key_of)
        if key is None:
            return items
        for run in self.claimed:
            if len(items) >= limit:
                return items
            if run is not head and first_key(run, self._key_of) == key:
                items += take_matching(run, key, limit - len(items), self._key_of)
        while len(items) < limit and not self.stop_after_image.is_set():
            job = self._claim()
            if job is None:
                break
            run = self._admit(job)
            if run is None:
                continue
            if first_key(run, self._key_of) != key:
                break  # held: it renders next
            items += take_matching(run, key, limit - len(items), self._key_of)
        return items

    def _render_batch(self, items: list[BatchItem]) -> None:
        targets: dict[BatchItem, Path] = {}
        for item in items:
            target = self._reserve(item)
            if target is not None:
                targets[item] = target
        items = [item for item in items if item in targets]
        if not items:
            return
        for item in items:
            item.run.started = True
        reporter = BatchProgress(self, items)
        self._offer_next_jobs()
        try:
            images = self._generate(items, reporter)
        except Interrupted:
            if self.stop_now.is_set() or not reporter.all_cancelled():
                raise
            for run in reporter.runs:
                self._end_run(run, Interrupted("cancelled"))
            return
        except Exception as exc:
            if len(items) == 1:
                self._end_run(items[0].run, exc)
                return
            logger.warning(
                "a batch of {} images failed ({}); rendering them one by one", len(items), _first_line(exc)
            )
            for item in items:
                if not item.run.ended:
                    self._render_batch([item])
            return
        for item, image in zip(items, images, strict=True):
            run = item.run
            run.steps_done += item.request.steps
            if run.ended:
                continue
            if run.cancelled:
                self._end_run(run, Interrupted("cancelled"))  # its images are dropped
                continue
            self._hand_over(item, image, targets[item], batch_size=len(items))

    def _reserve(self, item: BatchItem) -> Path | None:
        """The image's reserved name (planned now if need be); None when that failed its job."""
        run, index = item.run, item.index
        row = run.planned.get(index)
        try:
            if row is None:
                row = self.journal.plan_output(run.job_id, index, self._free_name(run, index))
                run.planned[index] = row
            target = Path(row.path)
            _remove_orphan(target)
        except Exception as exc:
            self._end_run(run, exc)
            return None
        crashpoint("before_generate")
        return target

    def _generate(self, items: list[BatchItem], reporter: BatchProgress) -> list[GeneratedImage]:
        """The batch's images; text to image may come back with the decode left to the publisher."""
        if len(items) > 1:
            requests = [item.request for item in items]
            return batching.generate_batch(
                self.engine, requests, progress=reporter, should_stop=reporter.should_stop, defer_decode=True
            )
        [item] = items
        image_input = item.run.image_input
        if image_input is None:
            return [
                batching.generate_one(
                    self.engine, item.request, reporter, reporter.should_stop, defer_decode=True
                )
            ]
        image = run_image_action(
            self.engine,
            item.request,
            image_input.job,
            image_input.context,
            progress=reporter,
            should_stop=reporter.should_stop,
        )
        return [image]

    # -- publishing ----------------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher[_Publication]:
        """Room for one batch of outstanding publications (a new publisher once the old one is idle,
        when ``background_writes`` or the engine's batch size changed)."""
        background = self.settings.outbox.background_writes
        depth = batching.batch_limit(self.engine)
        current = self._publisher
        if current is None or (
            (current.background, current.depth) != (background, depth) and not current.busy
        ):
            if current is not None:
                current.close()
            self._publisher = current = Publisher(background=background, depth=depth)
        return current

    def _hand_over(self, item: BatchItem, image: GeneratedImage, target: Path, *, batch_size: int) -> None:
        run, index = item.run, item.index
        control_images = take_control_images(image)
        saved_controls = None
        if control_images and wants_control_images(run.spec, self.settings):
            umask = self.settings.outbox.umask
            save = functools.partial(save_control_images, control_images, target, umask=umask)
            try:
                saved_controls = self._until_room(save)
            except Exception as exc:  # its job's trouble (retried, then failed), not the worker's
                self._end_run(run, exc)
                return
        publisher = self.publisher
        self._settle_finished()
        while publisher.full:
            self._settle()
        if run.ended:
            return  # an earlier image could not be published: the job is already retried or failed
        outbox = self.settings.outbox

        def publish() -> Path:
            picture = image.finished()  # a deferred decode runs here, beside the next render
            record = run.record_for(index, image, target, batch_size)
            if saved_controls is not None:
                record["control_images"] = saved_controls
            return self._write_and_record(run, index, picture, record, target, outbox)

        publisher.submit(publish, _Publication(run, index, image))
        if not publisher.background:
            self._settle()

    def _write_and_record(
        self,
        run: PreparedJob,
        index: int,
        image: Image.Image,
        record: dict[str, Any],
        target: Path,
        outbox: OutboxSettings,
    ) -> Path:
        """On the publisher thread: publish under the reserved name (another one if someone took it)."""
        for _ in range(_NAME_RACE_RETRIES):
            try:
                _, _, sha256 = self._until_room(
                    functools.partial(
                        write_image_with_sidecar,
                        image,
                        record,
                        target,
                        fmt=run.fmt,
                        quality=outbox.quality,
                        embed_metadata=outbox.embed_metadata,
                        umask=outbox.umask,
                    )
                )
                break
            except FileExistsError:
                target = self._free_name(run, index)
                self.journal.plan_output(run.job_id, index, target, replace=True)
                record["output_file"] = target.name
        else:
            raise TransientError(f"could not find a free output name in {target.parent}")
        crashpoint("after_output_written")
        self.journal.complete_output(run.job_id, index, sha256)
        crashpoint("after_output_recorded")
        return target

    def _until_room(self, write: Callable[[], R]) -> R:
        """``write()``, waiting for room while the outbox's disk is full, or for its network share to
        answer again (as the journal does): the rendered image is kept and written once it can be,
        instead of failing its job. A stop during the wait puts the job back in the queue without
        counting an attempt."""
        try:
            return retry_until_room(write, self.journal.space_wait, self._full_outbox_log)
        except DiskWait as exc:
            stopping = self.stop_after_image.is_set() or self.stop_now.is_set()
            if self.journal.space_wait is not None and stopping:
                raise Interrupted(f"stopping while waiting for {exc.waiting_for}: {exc.message}") from exc
            raise

    def _settle_all(self) -> bool:
        """Wait for every outstanding publication and take its outcome; returns whether there was one."""
        settled_any = False
        while self._settle():
            settled_any = True
        return settled_any

    def _settle_finished(self) -> None:
        """Take the outcomes of the publications that have ended, oldest first, without waiting."""
        while self._settle(wait=False):
            pass

    def _settle(self, *, wait: bool = True) -> bool:
        """Take the outcome of the oldest outstanding publication (``wait=False``: only if it has
        ended); returns whether there was one."""
        settled = self._publisher.settle(wait=wait) if self._publisher is not None else None
        if settled is None:
            return False
        run, index = settled.context.run, settled.context.index
        if settled.error is not None:
            if run.ended:
                logger.warning("{}: image {} not written: {}", run.label, index, _first_line(settled.error))
            else:
                self._end_run(run, settled.error)
            return True
        target: Path = settled.result
        run.to_publish.discard(index)
        self.counts.images_written += 1
        self.events.on_image_done(run.job_id, settled.context.generated, target)
        logger.info("wrote {}", target)
        if not run.ended and not run.to_publish:
            self._finish(run)
        return True

    def _free_name(self, run: PreparedJob, index: int) -> Path:
        request = run.requests[index]
        fields = name_fields(
            stem=run.stem,
            seed=request.seed,
            index=index,
            count=len(run.requests),
            job_id=run.job_id,
            finished=datetime.now(),
            width=request.width,
            height=request.height,
            model=request.model,
            performance=request.performance,
            prompt=request.prompt,
        )
        *folders, base = render_name(self.settings.outbox.name_template, fields).split("/")
        out_dir = run.out_dir.joinpath(*folders)
        self._until_room(functools.partial(self._make_output_folder, out_dir))
        extension = extension_for(run.fmt)
        reserved = self.journal.is_path_reserved
        return choose_free_name(out_dir, base, extension, taken=reserved, names=self._folder_names)

    def _make_output_folder(self, out_dir: Path) -> None:
        self._outbox_disk.check()  # never onto the bare mount point of an outbox share gone
        _make_folder(out_dir, self.settings.outbox.umask)

    # -- outcomes ------------------------------------------------------------------------------

    def _finish(self, run: PreparedJob) -> None:
        self._forget(run)
        if self.journal.finish_job(run.job_id, "done", None):  # False: it was cancelled meanwhile
            self.events.on_job_finished(run.job_id, "done", None)
        crashpoint("after_job_done")
        self.counts.jobs_done += 1

    def _end_run(self, run: PreparedJob, exc: BaseException) -> None:
        self._forget(run)
        self._record_outcome(run.job, run.label, exc)

    def _forget(self, run: PreparedJob) -> None:
        run.ended = True
        if run in self.claimed:
            self.claimed.remove(run)

    def _release_all(self, why: Interrupted | None = None) -> None:
        """Shutdown or pause: the publications handed over still land; every job still held goes
        back to the queue."""
        self._settle_all()
        for run in list(self.claimed):
            self._end_run(run, why or Interrupted("stopping"))

    def _record_outcome(self, job: JobRow, label: str, exc: BaseException) -> None:
        if isinstance(exc, Interrupted):
            current = self.journal.get_job(job.id)
            if current is not None and current.state == JobState.RUNNING:
                if isinstance(exc, Paused):
                    self.journal.release_interrupted(job.id, "paused by `fooocusd pause`; requeued")
                    logger.info("{} stopped for the pause; it stays queued, its finished images kept", label)
                else:
                    self.journal.release_interrupted(job.id)
                    logger.info("{} interrupted by shutdown; it stays queued", label)
            else:
                logger.info("{} cancelled", label)
        elif isinstance(exc, InvalidInput | ModelNotFound):
            error = exc.explain()
            self._fail(job.id, label, error + missing_files_note(job, error, self._prep_context()))
        elif isinstance(exc, OutOfMemory):
            self.engine.free_memory()
            self._retry_or_fail(job, label, exc.explain())
        elif isinstance(exc, TransientError):
            self._retry_or_fail(job, label, exc.explain())
        elif isinstance(exc, FooocusdError):
            self._fail(job.id, label, exc.explain())
        else:  # an engine bug must not kill the daemon; retry, then fail
            if lost := self._gpu_lost():
                self._stop_for_a_lost_gpu(job, label, lost, exc)
            logger.opt(exception=exc).error("unexpected error in {}", label)
            self._retry_or_fail(job, label, f"internal error: {type(exc).__name__}: {exc}")

    def _gpu_lost(self) -> str:
        return context_lost(torch.device(self.engine.describe().get("device", "cpu")))

    def _stop_for_a_lost_gpu(self, job: JobRow, label: str, lost: str, exc: BaseException) -> None:
        """The GPU can run nothing more in this process, so every job after this one would fail
        too: the daemon stops. This job stays running in the journal, so the next start counts it
        as a crash (one that fails the GPU each time ends in failed/ after ``journal.max_crashes``);
        the others held for its batch go back to the queue at no cost."""
        for run in self.claimed:
            if run.job.id != job.id:
                self.journal.release_interrupted(run.job.id, "the GPU stopped working; requeued")
        raise GpuLost(
            f"the GPU stopped working while rendering {label}: {lost}",
            hint="fooocusd stops so that a fresh start gets a working GPU (systemd restarts it); the job "
            "stays queued. If it happens again, look for Xid errors in `journalctl -k`: the driver "
            "may need reloading, or the machine a reboot",
        ) from exc

    def _fail(self, job_id: int, label: str, error: str) -> None:
        if self.journal.finish_job(job_id, "failed", error):
            self.events.on_job_finished(job_id, "failed", error)
        self.counts.jobs_failed += 1
        logger.error("{} failed: {}", label, error.splitlines()[0])

    def _retry_or_fail(self, job: JobRow, label: str, error: str) -> None:
        settings = self.settings.journal
        if job.attempts >= settings.max_attempts:
            self._fail(job.id, label, f"{error}\n(gave up after {job.attempts} attempts)")
            return
        delay = settings.retry_backoff_seconds * 2 ** (job.attempts - 1)
        self.journal.retry_later(job.id, delay, error)
        logger.warning("{} will be retried in {:.0f} s: {}", label, delay, error.splitlines()[0])


def _first_line(exc: BaseException) -> str:
    text = exc.explain() if isinstance(exc, FooocusdError) else f"{type(exc).__name__}: {exc}"
    return (text.splitlines() or [""])[0]


def _make_folder(folder: Path, umask: int) -> None:
    try:
        ensure_folder(folder, umask=umask)
    except OSError as exc:  # a full disk waits for room; the rest is retried with its reason
        raise describe_os_error(exc, folder) from exc


def _remove_orphan(target: Path) -> None:
    """An image without its sidecar is a leftover of a crash: it is rendered again."""
    sidecar = target.with_suffix(".json")
    if target.exists() and not sidecar.exists():
        target.unlink()
