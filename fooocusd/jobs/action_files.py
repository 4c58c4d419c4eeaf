"""The model files a job's image action and image prompts use, beside its checkpoints and LoRAs.

``preset_check.missing_job_files`` checks them when the job is queued, so that a job that will fail
for a missing file says so at once. Each is the file the engine looks up when the job runs:

==========================  ========================================================================
the job has                 files
==========================  ========================================================================
upscale_1.5x, _2x, _fast    its ``upscale_model``, else ``generation.upscale_model``
inpaint, outpaint           its ``inpaint_model``, else ``generation.inpaint_model`` (unless none)
image_prompt, face          the IP-Adapter file of the type, and the ViT-H image encoder
face                        the YuNet face detector too
pyracanny, cpds, depth      the ControlNet named by ``controlnet.canny``, ``cpds`` or ``depth``
depth                       the depth estimator (``controlnet.depth_estimator``) too
==========================  ========================================================================

A ControlNet setting left empty is not listed: the job fails with its own message for that.
"""

from __future__ import annotations

from fooocusd.engine.model_dirs import ModelFileKind
from fooocusd.engine.models import NO_REFINER
from fooocusd.jobs.spec import ImageAction, ImagePromptSpec, JobSpec
from fooocusd.settings import ControlNetSettings, GenerationSettings

WantedFile = tuple[ModelFileKind, str, str]
"""(kind, name, what the job uses it for)."""

IMAGE_ENCODER = "clip_vision_vit_h"
"""The name the ViT-H/14 image encoder is fetched under; any of the engine's encoder names will do."""
CONTROL_SETTINGS = {"pyracanny": "canny", "cpds": "cpds", "depth": "depth"}
"""As ``SETTING_FOR_TYPE`` in ``engine/controlnet/models.py``, which loads torch: submitting must not."""


def image_action(spec: JobSpec, generation: GenerationSettings) -> ImageAction | None:
    """What the job does with its input image, as the worker decides it; None without one."""
    if spec.image is None:
        return None
    return spec.image_action or ("inpaint" if spec.mask is not None else generation.image_action)


def action_files(
    spec: JobSpec, generation: GenerationSettings, controlnet: ControlNetSettings
) -> list[WantedFile]:
    """The files the job's image action and image prompts use, in that order, each once."""
    wanted: list[WantedFile] = []
    action = image_action(spec, generation)
    if action is not None and action.startswith("upscale"):
        wanted.append(("upscale_models", spec.upscale_model or generation.upscale_model, f"for {action}"))
    elif action in ("inpaint", "outpaint"):
        model = spec.inpaint_model if spec.inpaint_model is not None else generation.inpaint_model
        if model.strip().lower() not in NO_REFINER:  # the same words that mean "none" there
            wanted.append(("checkpoints", model, f"the inpainting model for {action}"))
    if spec.image_prompts:
        wanted.extend(_image_prompt_files(spec.image_prompts, controlnet))
    return list(dict.fromkeys(wanted))


def _image_prompt_files(prompts: list[ImagePromptSpec], controlnet: ControlNetSettings) -> list[WantedFile]:
    from fooocusd.engine.ip_adapter.files import ADAPTER_FILES, FACE_DETECTOR_FILE  # hub, not torch

    wanted: list[WantedFile] = []
    for kind in dict.fromkeys(prompt.type for prompt in prompts):
        purpose = f"for image prompts of type {kind}"
        if kind in ADAPTER_FILES:
            wanted.append(("ipadapter", ADAPTER_FILES[kind], purpose))
            wanted.append(("clip_vision", IMAGE_ENCODER, "the image encoder of image prompts"))
            if kind == "face":
                wanted.append(("face_detection", FACE_DETECTOR_FILE, purpose))
            continue
        setting = CONTROL_SETTINGS[kind]
        name = str(getattr(controlnet, setting)).strip()
        if name:
            wanted.append(("controlnet", name, f"{purpose}, controlnet.{setting}"))
        estimator = controlnet.depth_estimator.strip()
        if kind == "depth" and estimator:
            wanted.append(("depth_estimator", estimator, f"{purpose}, controlnet.depth_estimator"))
    return wanted
