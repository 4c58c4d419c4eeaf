"""The validated job spec: what one job asks for, before defaults are applied.

Every field but ``prompt`` is optional; ``None`` means "take it from the preset, then from
the daemon's configuration". ``resolve.py`` turns a spec into concrete generation settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SEED = 2**63 - 1
MAX_IMAGES = 32
Performance = Literal["quality", "speed", "extreme_speed", "lightning", "hyper_sd"]
OutputFormat = Literal["png", "jpeg", "webp"]
OutpaintDirection = Literal["left", "right", "top", "bottom"]
ImageAction = Literal[
    "vary_subtle", "vary_strong", "upscale_1.5x", "upscale_2x", "upscale_fast_2x", "inpaint", "outpaint"
]

_PROMPT_OPTIONAL: ContextVar[bool] = ContextVar("prompt_optional", default=False)


@contextmanager
def image_attached_after_parsing() -> Iterator[None]:
    """Inside this block a job may have neither a prompt nor an image.

    For a job file dropped with an image: the loader gives every parsed job that image right
    after parsing. Everywhere else (specs read back from the journal included) the rule holds.
    """
    token = _PROMPT_OPTIONAL.set(True)
    try:
        yield
    finally:
        _PROMPT_OPTIONAL.reset(token)


def prompt_is_optional() -> bool:
    """True inside ``image_attached_after_parsing``."""
    return _PROMPT_OPTIONAL.get()


_ASPECT = re.compile(r"^\s*(\d{1,5})\s*[*x×,]\s*(\d{1,5})\s*$")
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def parse_aspect(text: str) -> tuple[int, int]:
    """``"1152*896"``, ``"1152x896"`` or ``"1152×896"`` → (width, height)."""
    match = _ASPECT.match(text)
    if not match:
        raise ValueError(f"aspect must look like 1152*896 (width*height), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side < 64 or side > 4096 or side % 8:
            raise ValueError(f"aspect sides must be multiples of 8 between 64 and 4096, got {text!r}")
    return width, height


MAX_EXTRA_PROMPTS = 32
"""Prompts after the main one, each encoded on its own (a .txt file's further lines)."""


class LoraSpec(BaseModel):
    """One LoRA: a file name (looked up in the LoRA folders) and its weight."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    name: str = Field(..., min_length=1, max_length=300)
    weight: float = Field(1.0, ge=-2.0, le=2.0)


MAX_LORAS = 5
MAX_IMAGE_PROMPTS = 4
MAX_NOTES = 32
ImagePromptType = Literal["image_prompt", "face", "pyracanny", "cpds", "depth"]


class ImagePromptSpec(BaseModel):
    """One image prompt slot: a reference image and how it steers the render.

    ``image_prompt`` and ``face`` go through IP-Adapter; ``pyracanny``, ``cpds`` and ``depth`` through
    ControlNet. ``None`` weight / stop_at take the type's default.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    image: str = Field(..., min_length=1, max_length=1000, description="Relative to the job file.")
    type: ImagePromptType = "image_prompt"
    weight: float | None = Field(None, ge=0.0, le=2.0)
    stop_at: float | None = Field(None, ge=0.0, le=1.0)


class JobSpec(BaseModel):
    """One job. Unknown keys are refused so that typos never pass silently."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, validate_assignment=True, allow_inf_nan=False
    )

    prompt: str = Field("", max_length=20_000, description="Main prompt (line 1 of a .txt).")
    extra_prompts: list[str] = Field(default_factory=list, max_length=MAX_EXTRA_PROMPTS)
    negative: str = Field("", max_length=20_000)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="None: random, fixed at queue time.")
    images: int = Field(1, ge=1, le=MAX_IMAGES)
    disable_seed_increment: bool = False
    wildcards_in_order: bool = Field(False, description="Image i takes line i of each wildcard file.")
    preset: str | None = Field(None, max_length=100)
    styles: list[str] | None = None
    aspect: str | None = None
    steps: int | None = Field(None, ge=1, le=200)
    performance: Performance | None = None
    cfg: float | None = Field(None, ge=1.0, le=30.0)
    sharpness: float | None = Field(None, ge=0.0, le=30.0)
    adaptive_cfg: float | None = Field(None, ge=1.0, le=30.0, description="Fooocus's CFG mimicking.")
    adm_scaler_positive: float | None = Field(None, ge=0.1, le=3.0)
    adm_scaler_negative: float | None = Field(None, ge=0.1, le=3.0)
    adm_scaler_end: float | None = Field(None, ge=0.0, le=1.0)
    clip_skip: int | None = Field(None, ge=1, le=12)
    sampler: str | None = Field(None, max_length=64)
    scheduler: str | None = Field(None, max_length=64)
    model: str | None = Field(None, max_length=500)
    output_format: OutputFormat | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    name: str | None = Field(None, max_length=120, description="Output file stem; default: input stem.")
    image: str | None = Field(None, description="Input image, relative to the job file.")
    mask: str | None = Field(None, description="Inpaint mask (white = repaint), relative to the job file.")
    image_action: ImageAction | None = None
    loras: list[LoraSpec] | None = Field(None, max_length=MAX_LORAS, description="Up to 5, plus inline tags.")
    refiner: str | None = Field(None, max_length=500, description="Refiner checkpoint; 'none' turns it off.")
    refiner_switch: float | None = Field(None, ge=0.1, le=1.0, description="Fraction of steps before it.")
    vae: str | None = Field(None, max_length=500, description="VAE override file; 'default' = built-in.")
    image_prompts: list[ImagePromptSpec] | None = Field(None, max_length=MAX_IMAGE_PROMPTS)
    save_control_images: bool | None = Field(
        None, description="Save the ControlNet maps beside the image; None: outbox.save_control_images."
    )
    denoise: float | None = Field(None, gt=0.0, le=1.0, description="Image jobs: share of the steps re-run.")
    upscale_factor: float | None = Field(None, ge=1.0, le=8.0, description="Upscale: custom factor.")
    upscale_model: str | None = Field(None, max_length=500, description="Upscale: file in upscale_models.")
    inpaint_model: str | None = Field(
        None, max_length=500, description="Inpaint/outpaint: SDXL inpainting checkpoint; 'none' = base model."
    )
    outpaint: list[OutpaintDirection] | None = Field(None, max_length=4, description="Sides to extend.")
    outpaint_distance: float | None = Field(
        None, gt=0.0, le=4096.0, description="Per side: a fraction (≤ 1) of that side, or pixels (> 1)."
    )
    notes: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list,
        max_length=MAX_NOTES,
        description="Recorded in each image's sidecar: yours, and what reading the job changed or left out.",
    )

    @field_validator("aspect")
    @classmethod
    def _aspect_is_parseable(cls, value: str | None) -> str | None:
        if value is not None:
            width, height = parse_aspect(value)
            return f"{width}*{height}"
        return value

    @field_validator("name", "preset")
    @classmethod
    def _no_path_in_names(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _SAFE_NAME.match(value) or value in {".", ".."} or value.startswith("."):
            raise ValueError("must be a plain name without '/', '\\' or a leading '.'")
        return value

    @field_validator("extra_prompts")
    @classmethod
    def _drop_empty_extra_prompts(cls, value: list[str]) -> list[str]:
        return [line.strip() for line in value if line.strip()]

    @model_validator(mode="after")
    def _needs_something_to_do(self) -> JobSpec:
        if not self.prompt and self.image is None and not prompt_is_optional():
            raise ValueError("a job needs a prompt (or an image to work from)")
        return self

    def size(self) -> tuple[int, int] | None:
        return parse_aspect(self.aspect) if self.aspect else None
