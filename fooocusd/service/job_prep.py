"""Turning a claimed job row into everything its images need: styled requests, names, record fields.

A ``PreparedJob`` also tracks, on the worker thread, which of its images are still to render and
which are still to publish, so several jobs can be in flight at once (batches, background writes).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.engine.expansion import PromptExpansion, apply_expansion, expansion_record
from fooocusd.engine.image_actions import steps_for
from fooocusd.engine.loras import with_inline_loras
from fooocusd.engine.prompt_syntax import WildcardLibrary, expand_prompts
from fooocusd.engine.styles import StyleLibrary, Workloads, compose_workloads
from fooocusd.errors import FooocusdError
from fooocusd.jobs.preset_check import check_preset_models, failed_job_files_note, missing_job_files
from fooocusd.jobs.presets import Preset, load_preset
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import InputRow, JobRow, OutputRow, OutputState, job_label
from fooocusd.outbox.metadata import build_record
from fooocusd.service.folders import Folders
from fooocusd.service.image_inputs import ImageInput, load_image_input
from fooocusd.service.image_prompt_inputs import image_prompt_fields, load_image_prompts
from fooocusd.settings import Settings


@dataclass(eq=False)  # identity: one object per claimed job
class PreparedJob:
    job: JobRow
    source: InputRow
    label: str
    spec: JobSpec
    preset: Preset
    image_input: ImageInput | None
    requests: list[GenerationRequest]
    workloads: list[Workloads]
    out_dir: Path
    stem: str
    fmt: str
    planned: dict[int, OutputRow]
    to_render: list[int]
    """Image indices not yet handed to the engine, in order."""
    to_publish: set[int]
    """Image indices whose outputs are not yet complete (rendering, rendered or being written)."""
    steps_done: int = 0
    total_steps: int = 0
    started: bool = False
    """An image of it has been handed to the engine (it then keeps the settings it was prepared with)."""
    cancelled: bool = False
    ended: bool = False
    """Its outcome (done, failed, retried, released, cancelled) is recorded; nothing more is done for it."""

    @property
    def job_id(self) -> int:
        return self.job.id

    def record_for(self, index: int, image: GeneratedImage, target: Path, batch_size: int) -> dict[str, Any]:
        """The sidecar record of image ``index`` (the same whether it rendered alone or in a batch)."""
        request = self.requests[index]
        record = build_record(
            job_id=self.job.id,
            input_name=self.source.relpath,
            input_sha256=self.source.sha256,
            request=request,
            generated=image,
            image_index=index,
            image_count=len(self.requests),
            output_name=target.name,
            fmt=self.fmt,
        )
        workloads = self.workloads[index]
        record.update(
            styles_applied=workloads.styles_applied,
            adaptive_cfg=request.adaptive_cfg,
            adm_guidance=[request.adm_scaler_positive, request.adm_scaler_negative, request.adm_scaler_end],
            clip_skip=request.clip_skip,
            **expansion_record(workloads),
            preset=self.preset.name,
            model_file=image.model_path,
            requested_width=request.width,
            requested_height=request.height,
            batch_size=batch_size,
        )
        if self.image_input is not None:
            record.update(self.image_input.sidecar_fields(image))
        record.update(image_prompt_fields(image))
        if self.spec.notes:
            record["notes"] = list(self.spec.notes)
        return record


@dataclass(frozen=True)
class PrepContext:
    """What preparing a job reads; taken from the worker at each call (settings may be reloaded)."""

    settings: Settings
    folders: Folders
    journal: Journal
    preset_dirs: list[Path]
    styles: StyleLibrary
    expansion: PromptExpansion | None


def prepare_job(job: JobRow, source: InputRow, context: PrepContext) -> PreparedJob:
    """Raises the job's own error (``InvalidInput`` for a bad spec, image or missing model)."""
    settings, folders = context.settings, context.folders
    spec = JobSpec.model_validate_json(job.spec_json)
    image_input = load_image_input(spec, source, folders, settings) if spec.image is not None else None
    image_prompts = load_image_prompts(spec, source, folders, settings)
    preset, requests = _resolve(spec, context)
    if image_input is not None:
        action, given = image_input.job.action, spec.steps is not None
        requests = [
            dataclasses.replace(r, steps=steps_for(action, r.performance, r.steps, steps_given=given))
            for r in requests
        ]
    if image_prompts:
        requests = [dataclasses.replace(r, image_prompts=image_prompts) for r in requests]
    wildcards = WildcardLibrary(folders.wildcards)  # read per job: new files count at once
    styled = [
        with_styles(request, index, wildcards, context.styles, context.expansion)
        for index, request in enumerate(requests)
    ]
    if wildcards.unresolved:  # said in the log; the sidecar keeps it with the picture
        said = [
            f"wildcard __{name}__ became the bare word '{name}': {why}"
            for name, why in wildcards.unresolved.items()
        ]
        spec = spec.model_copy(update={"notes": [*spec.notes, *said]})
    relpath = PurePosixPath(source.relpath)
    stem = spec.name or relpath.stem
    if spec.name is None and len(context.journal.jobs_for_input(source.id)) > 1:
        stem = f"{stem}-{job.seq + 1}"  # the jobs of one file get names of their own
    planned = {row.image_index: row for row in context.journal.outputs_for(job.id)}
    missing = [
        index
        for index in range(len(requests))
        if index not in planned or planned[index].state != OutputState.COMPLETE
    ]
    final_requests = [request for request, _ in styled]
    return PreparedJob(
        job=job,
        source=source,
        label=job_label(job, source),
        spec=spec,
        preset=preset,
        image_input=image_input,
        requests=final_requests,
        workloads=[workloads for _, workloads in styled],
        out_dir=folders.outbox / relpath.parent,
        stem=stem,
        fmt=spec.output_format or settings.outbox.format,
        planned=planned,
        to_render=list(missing),
        to_publish=set(missing),
        steps_done=sum(final_requests[i].steps for i in range(len(requests)) if i not in missing),
        total_steps=sum(request.steps for request in final_requests),
    )


def expand_ahead(job: JobRow, context: PrepContext) -> None:
    """Run the prompt expansions ``prepare_job`` will ask for, so that they are remembered
    (``PromptExpansion.ahead``), or record them (``PromptExpansion.collecting``). A job whose spec,
    preset or prompt is broken (a runaway wildcard, say), or whose expansion fails, is skipped:
    preparing it reports that, against that job."""
    try:
        spec = JobSpec.model_validate_json(job.spec_json)
        _preset, requests = _resolve(spec, context)
        wildcards = WildcardLibrary(context.folders.wildcards, warn=False)  # prepare_job warns
        for index, request in enumerate(requests):
            with_styles(request, index, wildcards, context.styles, context.expansion)
    except Exception:
        return


def missing_files_note(job: JobRow, error: str, context: PrepContext) -> str:
    """What to add to the report of ``job``, which failed with ``error``: every model file it needs
    that is not installed (``failed_job_files_note``), or nothing."""
    settings = context.settings
    try:
        spec = JobSpec.model_validate_json(job.spec_json)
        preset = load_preset(spec.preset or settings.generation.preset, context.preset_dirs)
        missing = missing_job_files(spec, preset, settings, context.styles, context.folders.models)
    except (FooocusdError, ValueError):  # the error being reported says what is wrong with the job
        return ""
    return failed_job_files_note(missing, error)


def _resolve(spec: JobSpec, context: PrepContext) -> tuple[Preset, list[GenerationRequest]]:
    """The job's preset and one request per image (before styles, wildcards and expansion)."""
    settings = context.settings
    preset = load_preset(spec.preset or settings.generation.preset, context.preset_dirs)
    check_preset_models(preset, spec, context.folders.models, settings.engine.model)
    return preset, resolve_requests(spec, preset, settings.generation, settings.engine.model)


def with_styles(
    request: GenerationRequest,
    image_index: int,
    wildcards: WildcardLibrary,
    styles: StyleLibrary,
    expansion: PromptExpansion | None,
) -> tuple[GenerationRequest, Workloads]:
    """Each image composes its own workloads from its own ``random.Random(seed)``.

    Wildcards and ``{choices}``, then arrays (by ``image_index``), then the ``<lora:…>`` tags of the
    result (into ``request.loras``), then styles ("Random Style" draws from the same rng, after
    wildcards). Fooocus reads LoRA tags before wildcards, once per job; here a tag a wildcard line
    or a choice brings is that image's own LoRA.
    """
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
    request = with_inline_loras(dataclasses.replace(request, prompt=expanded.prompt))
    workloads = compose_workloads(
        request.prompt, expanded.extra_prompts, expanded.negative, request.styles, styles, rng
    )
    # Each image's own expansion, seeded by its seed, becomes its last positive workload.
    workloads = apply_expansion(workloads, expansion, request.seed)
    styled = dataclasses.replace(
        request,
        prompt=request.prompt,  # the sidecar records the text this image really used
        extra_prompts=expanded.extra_prompts,
        negative=expanded.negative,
        positive_workloads=tuple(workloads.positive),
        negative_workloads=tuple(workloads.negative),
    )
    return styled, workloads
