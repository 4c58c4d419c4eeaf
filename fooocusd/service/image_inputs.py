"""The worker's side of image jobs: find the claimed input image (and mask), decode them, describe the job.

A claimed input's files live in ``<state>/processing/<claim>/`` while its jobs run; the journal
records each file's role and where it came from. Files a job names by path are claimed with it
(roles ``named``/``shared``); one that somehow was not is read from the inbox.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fooocusd.engine.base import GeneratedImage
from fooocusd.engine.image_actions import ImageActionContext, ImageJob
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.errors import InvalidInput
from fooocusd.jobs.action_files import image_action
from fooocusd.jobs.images import load_input_image, load_mask
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.rows import InputRow
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings


@dataclass(frozen=True)
class ImageInput:
    """A decoded image job plus the facts its sidecars record about the source."""

    job: ImageJob
    context: ImageActionContext
    source_name: str
    source_sha256: str
    mask_name: str | None

    def sidecar_fields(self, generated: GeneratedImage) -> dict[str, Any]:
        done = dict(generated.extra.get("image_action", {}))
        done.update(source_image=self.source_name, source_image_sha256=self.source_sha256)
        if self.mask_name is not None:
            done["mask"] = self.mask_name
        return {"image_action": done}


def load_image_input(spec: JobSpec, source: InputRow, folders: Folders, settings: Settings) -> ImageInput:
    """Decode ``spec.image`` (and its mask) for the job. Raises ``InvalidInput`` for unusable files."""
    assert spec.image is not None
    max_pixels = settings.intake.max_image_pixels
    image_path = claimed_path(source, "image", spec.image, folders.inbox)
    image = load_input_image(image_path, max_pixels)
    mask = None
    mask_name = None
    if spec.mask is not None:
        mask_path = claimed_path(source, "mask", spec.mask, folders.inbox)
        mask = load_mask(mask_path, image.size, max_pixels)
        mask_name = spec.mask
    action = image_action(spec, settings.generation)
    assert action is not None
    job = ImageJob(
        action=action,
        image=image,
        mask=mask,
        denoise=spec.denoise,
        upscale_factor=spec.upscale_factor,
        upscale_model=spec.upscale_model or settings.generation.upscale_model,
        outpaint=tuple(spec.outpaint or ()),
        outpaint_distance=spec.outpaint_distance,
        inpaint_model=(
            spec.inpaint_model if spec.inpaint_model is not None else settings.generation.inpaint_model
        ),
    )
    context = ImageActionContext(
        model_dirs=ModelDirs.of(folders.models),
        allow_unsafe_pickle=bool(getattr(settings.engine, "allow_unsafe_pickle", False)),
    )
    return ImageInput(job, context, spec.image, _sha256(image_path), mask_name)


def claimed_path(source: InputRow, role: str, relpath: str, inbox: Path) -> Path:
    """Where the file ``relpath`` (inbox-relative) of ``source`` is now: its claim folder, else the inbox.

    A file the job names by path that is not the claimed one (``image: other.png`` beside a
    claimed ``cat.png``) is read from the inbox; the lone claimed file of that role is the last resort.
    """
    # Any role: a file the job names by path is claimed as 'named' or 'shared', not as 'image'.
    for file in source.files:
        if _inbox_relative(file.source_path, inbox) == relpath and file.claimed_path.exists():
            return file.claimed_path
    same_role = [file for file in source.files if file.role == role]
    candidate = inbox / relpath
    if candidate.is_file():
        return candidate
    if len(same_role) == 1 and same_role[0].claimed_path.exists():
        return same_role[0].claimed_path
    raise InvalidInput(
        f"the {role} {relpath} is gone: it is neither in the claim folder nor in the inbox",
        where=role,
        hint="drop the image and its job file again",
    )


def _inbox_relative(path: Path, inbox: Path) -> str | None:
    for root in (inbox, inbox.resolve()):
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            continue
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
