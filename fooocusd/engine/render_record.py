"""What an engine reports about a model and an image: ``describe``'s model facts, the image's record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.engine.decode_lane import DeferredImage
from fooocusd.engine.denoise import GuidanceSettings
from fooocusd.engine.devices import dtype_name
from fooocusd.engine.models import ModelLocation, autov2
from fooocusd.engine.samplers import SchedulerChoice


def model_facts(location: ModelLocation, sha256: str) -> dict[str, Any]:
    """The resident model as ``describe`` names it: name, kind, path and hashes."""
    return {
        "model": location.name,
        "model_kind": location.kind,
        "model_path": str(location.path or ""),
        "model_sha256": sha256,
        "model_hash": autov2(sha256),
    }


def rendered_image(
    request: GenerationRequest,
    image: Image.Image | DeferredImage,
    choice: SchedulerChoice,
    timings: dict[str, float],
    *,
    location: ModelLocation,
    sha256: str,
    device: torch.device,
    dtype: torch.dtype,
    reduced_size: bool,
) -> GeneratedImage:
    """The image (or its pending decode) with the facts every family records (model, device, sampler,
    timings)."""
    width, height = image.size
    return GeneratedImage(
        image=image,
        width=width,
        height=height,
        model_name=location.name,
        model_path=str(location.path or ""),
        model_sha256=sha256,
        device=str(device),
        dtype=dtype_name(dtype),
        timings={key: round(value, 4) for key, value in timings.items()},
        extra={
            "scheduler_class": choice.class_name,
            "sampler": choice.sampler,
            "scheduler": choice.schedule,
            "requested_size": [request.width, request.height],
            "reduced_size": reduced_size,
            "extra_prompts_mode": "separate",
        },
    )


def guidance_record(
    request: GenerationRequest,
    settings: GuidanceSettings,
    positive_workloads: tuple[str, ...],
    negative_workloads: tuple[str, ...],
    *,
    adm: Mapping[str, Any],
) -> dict[str, Any]:
    """What the loop applied, for the outbox's metadata; ``adm`` is the family's ADM entry."""
    return {
        "sharpness": request.sharpness,
        "sharpness_applied": settings.uses_cfg and request.sharpness > 0.0,
        "adaptive_cfg": request.adaptive_cfg,
        "adaptive_cfg_applied": settings.uses_cfg and request.cfg > request.adaptive_cfg,
        **adm,
        "clip_skip": request.clip_skip,
        "positive_workloads": len(positive_workloads),
        "negative_workloads": len(negative_workloads) if settings.uses_cfg else 0,
        "full_prompt": list(positive_workloads),
        "full_negative_prompt": list(negative_workloads),
    }


def sdxl_adm_record(request: GenerationRequest) -> dict[str, Any]:
    """SDXL's ADM scalers as the job set them."""
    return {
        "adm_scaler_positive": request.adm_scaler_positive,
        "adm_scaler_negative": request.adm_scaler_negative,
        "adm_scaler_end": request.adm_scaler_end,
    }


NO_ADM_RECORD: Mapping[str, Any] = {"adm_applied": False}
"""SD 1.x/2.x UNets take no size ids, so ADM guidance never applies."""
