"""Image jobs end to end: vary, upscale, inpaint and outpaint around one ``Engine.generate`` call.

The worker hands over the decoded input image (and mask) and the job's concrete request; this
module sizes the work, runs super-resolution where needed, asks the engine for the diffusion pass
(a ``GenerationRequest`` with an ``ImageTask``), pastes inpainted areas back, and returns the final
image with a record of what it did for the sidecar.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from fooocusd.engine.base import (
    Engine,
    GeneratedImage,
    GenerationRequest,
    ImagePrompt,
    ImageTask,
    ProgressCallback,
    StopCheck,
)
from fooocusd.engine.controlnet.models import CONTROL_TYPES
from fooocusd.engine.controlnet.preprocess import fit_to_size
from fooocusd.engine.img2img import VARY_STRENGTH, size_for_ceil, vary_size
from fooocusd.engine.inpaint import (
    INPAINT_FIELD,
    OUTPAINT_FIELD,
    WORKING_CEIL,
    Box,
    mask_bounding_box,
    paste_back,
    prefill,
    working_area,
)
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.outpaint import extend_canvas
from fooocusd.engine.upscale import (
    UPSCALE_FACTORS,
    UPSCALE_STRENGTH,
    find_upscaler,
    load_upscaler,
    plan_upscale,
    resize_to,
    super_resolve,
)
from fooocusd.errors import InvalidInput

DEFAULT_UPSCALE_MODEL = "RealESRGAN_x4plus"
_FULL_STRENGTH = 0.99  # above this an inpaint starts from the pre-filled hole, as Fooocus does
_MAX_SIDE = 4096
# Fooocus's steps for upscale/vary passes ("StepsUOV"), until fooocusd.jobs.performance provides them.
_UOV_STEPS = {"quality": 36, "speed": 18, "extreme_speed": 8, "lightning": 4, "hyper_sd": 4}


@dataclass(frozen=True)
class ImageJob:
    """What the job asks of its input image. ``denoise`` None: the action's own strength."""

    action: str
    image: Image.Image
    mask: Image.Image | None = None
    denoise: float | None = None
    upscale_factor: float | None = None
    upscale_model: str = DEFAULT_UPSCALE_MODEL
    outpaint: tuple[str, ...] = ()
    outpaint_distance: float | None = None
    inpaint_model: str = ""
    """Inpaint/outpaint: SDXL inpainting checkpoint to render with; "" or "none": the base model."""


@dataclass
class ImageActionContext:
    """What the image path needs besides the engine."""

    model_dirs: ModelDirs
    allow_unsafe_pickle: bool = False
    record: dict[str, Any] = field(default_factory=dict)


def uov_steps(performance: str) -> int:
    """Steps of an upscale pass for a performance mode (Fooocus: Quality 36, Speed 18, 8, 4, 4)."""
    try:
        from fooocusd.jobs.performance import uov_steps as shared  # type: ignore[import-not-found]
    except ImportError:
        return _UOV_STEPS.get(performance, _UOV_STEPS["speed"])
    return int(shared(performance))


def steps_for(action: str, performance: str, steps: int, *, steps_given: bool) -> int:
    """Upscales use the performance's upscale steps unless the job set ``steps``; the rest use ``steps``."""
    if action.startswith("upscale") and not steps_given:
        return uov_steps(performance)
    return steps


def run_image_action(
    engine: Engine,
    request: GenerationRequest,
    job: ImageJob,
    context: ImageActionContext,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GeneratedImage:
    """The finished image for ``job``; ``extra["image_action"]`` says what was done."""
    if job.action in VARY_STRENGTH:
        return _vary(engine, request, job, progress, should_stop)
    if job.action in UPSCALE_FACTORS:
        return _upscale(engine, request, job, context, progress, should_stop)
    if job.action in {"inpaint", "outpaint"}:
        return _inpaint(engine, request, job, progress, should_stop)
    raise InvalidInput(f"unknown image action {job.action!r}", where="image_action")


def _vary(
    engine: Engine,
    request: GenerationRequest,
    job: ImageJob,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> GeneratedImage:
    strength = job.denoise if job.denoise is not None else VARY_STRENGTH[job.action]
    size = vary_size(*job.image.size)
    task = ImageTask("vary", resize_to(job.image, size), strength)
    generated = engine.generate(_with_task(request, size, task), progress=progress, should_stop=should_stop)
    return _finish(generated, generated.image, {"action": job.action, "denoise": strength})


def _upscale(
    engine: Engine,
    request: GenerationRequest,
    job: ImageJob,
    context: ImageActionContext,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> GeneratedImage:
    factor = job.upscale_factor if job.upscale_factor is not None else UPSCALE_FACTORS[job.action]
    plan = plan_upscale(*job.image.size, factor, fast=job.action == "upscale_fast_2x")
    path = find_upscaler(context.model_dirs, job.upscale_model)
    started = time.perf_counter()
    model = load_upscaler(path, allow_pickle=context.allow_unsafe_pickle)
    device = str(engine.describe().get("device", "cpu"))
    enlarged = resize_to(super_resolve(model, job.image, device=device), plan.target)
    del model
    sr_seconds = round(time.perf_counter() - started, 4)
    record: dict[str, Any] = {
        "action": job.action,
        "upscale_model": path.name,
        "upscale_factor": factor,
        "upscale_diffused": plan.diffuse,
        "target_size": list(plan.target),
    }
    if not plan.diffuse:
        return _without_diffusion(engine, enlarged, {**record, "denoise": 0.0}, sr_seconds)
    strength = job.denoise if job.denoise is not None else UPSCALE_STRENGTH
    size = plan.diffusion_size
    task = ImageTask("upscale", resize_to(enlarged, size), strength, tiled_vae=True)
    generated = engine.generate(_with_task(request, size, task), progress=progress, should_stop=should_stop)
    generated.timings["super_resolution"] = sr_seconds
    return _finish(generated, resize_to(generated.image, plan.target), {**record, "denoise": strength})


def _inpaint(
    engine: Engine,
    request: GenerationRequest,
    job: ImageJob,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> GeneratedImage:
    record: dict[str, Any] = {"action": job.action}
    image, mask = job.image, job.mask
    padding = (0, 0, 0, 0)
    if job.action == "outpaint":
        if not job.outpaint:
            raise InvalidInput(
                "outpaint needs at least one direction",
                where="outpaint",
                hint='add e.g. outpaint = ["left", "right"] (TOML) or "outpaint: left, right" (.txt)',
            )
        image, mask, padding = extend_canvas(image, mask, job.outpaint, job.outpaint_distance)
        record.update(outpaint=list(job.outpaint), outpaint_padding=list(padding))
    if mask is None:
        raise InvalidInput(
            "inpaint needs a mask (white = repaint)",
            where="mask",
            hint='drop name.mask.png beside name.png, or set mask = "file.png" in the .toml',
        )
    box = mask_bounding_box(mask)
    if box is None:
        raise InvalidInput(
            "the mask is all black, so there is nothing to repaint",
            where="mask",
            hint="paint the area to change in white (values of 128 and above count)",
        )
    strength = job.denoise if job.denoise is not None else 1.0
    reach = OUTPAINT_FIELD if job.action == "outpaint" else INPAINT_FIELD
    area = working_area(box, image.width, image.height, reach)
    crop, crop_mask = image.crop(area), mask.crop(area)
    start = prefill(crop, crop_mask) if strength > _FULL_STRENGTH else crop
    size = _working_size(crop.size)
    task = ImageTask(
        "inpaint",
        resize_to(start, size),
        strength,
        mask=crop_mask.resize(size, Image.Resampling.NEAREST),
        inpaint_model=job.inpaint_model,
    )
    request = dataclasses.replace(
        request, image_prompts=aligned_control_prompts(request.image_prompts, job.image.size, padding, area)
    )
    generated = engine.generate(_with_task(request, size, task), progress=progress, should_stop=should_stop)
    final = paste_back(image, generated.image, mask, area)
    record.update(denoise=strength, working_area=list(area), working_size=list(size))
    record["inpaint_model"] = generated.extra.get("inpaint_model")  # None: the base model repainted it
    return _finish(generated, final, record)


def aligned_control_prompts(
    prompts: tuple[ImagePrompt, ...],
    source_size: tuple[int, int],
    padding: tuple[int, int, int, int],
    area: Box,
) -> tuple[ImagePrompt, ...]:
    """``prompts`` with each ControlNet image turned into the part of the picture that is rendered.

    A control image describes the whole input image (``source_size``): it is fitted to that size,
    extended like the outpaint canvas (``padding``: left, top, right, bottom, edge pixels repeated)
    and cropped to the working ``area``, so its edges/structure line up with the crop the engine
    renders. IP-Adapter references are not spatial: they keep their whole image.
    """
    left, top, right, bottom = padding
    aligned = []
    for prompt in prompts:
        if prompt.kind in CONTROL_TYPES:
            pixels = np.asarray(fit_to_size(prompt.image, *source_size))
            extended = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
            prompt = dataclasses.replace(prompt, image=Image.fromarray(extended, "RGB").crop(area))
        aligned.append(prompt)
    return tuple(aligned)


def _working_size(crop: tuple[int, int]) -> tuple[int, int]:
    width, height = size_for_ceil(*crop, WORKING_CEIL)
    return min(width, _MAX_SIDE), min(height, _MAX_SIDE)


def _with_task(request: GenerationRequest, size: tuple[int, int], task: ImageTask) -> GenerationRequest:
    return dataclasses.replace(request, width=size[0], height=size[1], image_task=task)


def _finish(generated: GeneratedImage, image: Image.Image, record: dict[str, Any]) -> GeneratedImage:
    generated.image = image
    generated.width, generated.height = image.size
    generated.extra["image_action"] = record
    return generated


def _without_diffusion(
    engine: Engine, image: Image.Image, record: dict[str, Any], seconds: float
) -> GeneratedImage:
    facts = engine.describe()
    return GeneratedImage(
        image=image,
        width=image.width,
        height=image.height,
        model_name=str(facts.get("model", "")),
        model_path=str(facts.get("model_path", "")),
        model_sha256=str(facts.get("model_sha256", "")),
        device=str(facts.get("device", "cpu")),
        dtype=str(facts.get("dtype", "")),
        timings={"super_resolution": seconds, "total": seconds},
        extra={"image_action": record},
    )
