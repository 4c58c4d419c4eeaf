"""The worker's side of image prompts: decode each slot's picture, and save the ControlNet maps.

Each ``JobSpec.image_prompts`` slot names an inbox-relative file (resolved and checked at intake,
claimed with the job); it is decoded upright as RGB and given its type's default weight and
"stop at" where the job left them out. The engine returns the preprocessed ControlNet maps in
``GeneratedImage.extra``; when asked, they are written beside the image, atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fooocusd.engine.base import GeneratedImage, ImagePrompt
from fooocusd.engine.image_prompts import CONTROL_IMAGES_KEY, ControlImage, default_weight_and_stop
from fooocusd.jobs.images import load_input_image
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.rows import InputRow
from fooocusd.outbox.atomic import publish_bytes
from fooocusd.service.folders import Folders
from fooocusd.service.image_inputs import claimed_path
from fooocusd.settings import Settings


def load_image_prompts(
    spec: JobSpec, source: InputRow, folders: Folders, settings: Settings
) -> tuple[ImagePrompt, ...]:
    """The job's image prompts, decoded, with defaults filled in. Raises ``InvalidInput`` for a bad file."""
    prompts = []
    for slot in spec.image_prompts or ():
        path = claimed_path(source, "image prompt", slot.image, folders.inbox)
        image = load_input_image(path, settings.intake.max_image_pixels)
        weight, stop_at = default_weight_and_stop(slot.type)
        prompts.append(
            ImagePrompt(
                kind=slot.type,
                image=image,
                weight=weight if slot.weight is None else slot.weight,
                stop_at=stop_at if slot.stop_at is None else slot.stop_at,
                source=slot.image,
            )
        )
    return tuple(prompts)


def take_control_images(generated: GeneratedImage) -> list[ControlImage]:
    """Remove the engine's preprocessed maps from ``generated.extra`` (they are not metadata)."""
    return list(generated.extra.pop(CONTROL_IMAGES_KEY, None) or [])


def image_prompt_fields(generated: GeneratedImage) -> dict[str, Any]:
    """The sidecar's ``image_prompts`` list (type, source, weight, stop_at, model ...), if any."""
    records = generated.extra.get("image_prompts")
    if not records:
        return {}
    fields: dict[str, Any] = {"image_prompts": [dict(record) for record in records]}
    if "controlnet_softness" in generated.extra:
        fields["controlnet_softness"] = generated.extra["controlnet_softness"]
    return fields


def control_image_path(image_path: Path, control: ControlImage) -> Path:
    """``<image name>.control-<slot>-<type>.png`` beside the image."""
    return image_path.with_name(f"{image_path.stem}.control-{control.slot}-{control.kind}.png")


def save_control_images(controls: list[ControlImage], image_path: Path, *, umask: int) -> list[str]:
    """Write each map beside ``image_path`` (atomically; a re-render replaces them); returns the names."""
    names = []
    for control in controls:
        buffer = io.BytesIO()
        control.image.save(buffer, format="PNG")
        path = publish_bytes(
            control_image_path(image_path, control), buffer.getvalue(), umask=umask, overwrite=True
        )
        names.append(path.name)
    return names


def wants_control_images(spec: JobSpec, settings: Settings) -> bool:
    return (
        settings.outbox.save_control_images if spec.save_control_images is None else spec.save_control_images
    )
