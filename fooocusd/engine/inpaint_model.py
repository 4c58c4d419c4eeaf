"""SDXL inpainting models: a 9-channel UNet that sees the mask and the masked image at every call.

An SDXL inpainting checkpoint (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` and the
"...inpainting" fine-tunes) has the base model's text encoders and VAE but a UNet whose first
convolution takes 9 channels: the 4 noisy latents, the repaint mask at latent size, and the 4 latents
of the image with the repaint area blanked to grey. fooocusd loads only that UNet and keeps using the
resident base model's text encoders and VAE, as the refiner does (``refiner.py``).

For an inpaint task with ``inpaint_model`` set, ``InpaintModelCache.start`` gives an
``InpaintingRun``: a view of the pipeline whose ``unet`` is the inpainting UNet (the loop, the refiner
switch and the image-prompt providers all call ``pipeline.unet``), and ``attached()``, which makes
every call of that UNet append ``[mask, masked-image latents]`` to its input, repeated over the CFG
batch. The scheduler's input scaling has already been applied to the 4 latent channels by then and
never touches the extra 5, as in diffusers' ``StableDiffusionXLInpaintPipeline``.

What changes against base-model inpainting: the known region is not re-imposed after each step (the
model itself keeps the surroundings consistent). What stays: the working-area crop, the pre-filled
start latents and the final paste-back through the feathered mask, so every pixel outside the mask
is still the original's, byte for byte. LoRAs are attached to the base UNet only; the inpainting UNet
renders without them (the sidecar says so).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from PIL import Image

from fooocusd.engine.base import GenerationRequest, ImageTask
from fooocusd.engine.extra_unet import ExtraUNetCache, LoadedUNet, load_unet
from fooocusd.engine.families import INPAINT_CHANNELS, detect_family
from fooocusd.engine.img2img import encode_image
from fooocusd.engine.inpaint import latent_repaint_mask, repaint_area
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import ModelLocation, autov2, resolve_model
from fooocusd.errors import InvalidInput, ModelNotFound

NO_INPAINT_MODEL = frozenset({"", "none", "off", "no"})
LATENT_CHANNELS = 4
SETTING = "generation.inpaint_model"
_GREY = 0.5  # the blanked area, in [0, 1]; 0 after the VAE's [-1, 1] normalisation, as diffusers does


def inpaint_model_wanted(name: str) -> bool:
    return name.strip().lower() not in NO_INPAINT_MODEL


class LoadedInpaintModel(LoadedUNet):
    """An inpainting UNet on the device, and what the metadata says about it."""

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "hash": autov2(self.sha256)}


@dataclass(frozen=True, eq=False)
class InpaintInputs:
    """The two extra inputs of an inpainting UNet, for one image: mask (1×1×h×w), masked latents (1×4×h×w)."""

    mask: torch.Tensor
    masked_latents: torch.Tensor

    def extend(self, latents: torch.Tensor) -> torch.Tensor:
        """``[latents, mask, masked latents]`` on the channel axis, the extras repeated over the batch."""
        batch = latents.shape[0]
        extra = torch.cat([self.mask, self.masked_latents], dim=1)
        extra = extra.to(device=latents.device, dtype=latents.dtype)
        return torch.cat([latents, extra.expand(batch, -1, -1, -1)], dim=1)

    def before_unet_call(
        self, _unet: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """A forward pre-hook: extend the UNet's ``sample`` (positional or keyword) if it has 4 channels."""
        if args:
            if args[0].shape[1] != LATENT_CHANNELS:
                return None
            return (self.extend(args[0]), *args[1:]), kwargs
        sample = kwargs.get("sample")
        if sample is None or sample.shape[1] != LATENT_CHANNELS:
            return None
        return args, {**kwargs, "sample": self.extend(sample)}


class PipelineWithUNet:
    """``pipeline`` as seen by the code that calls ``pipeline.unet``, with another UNet in its place."""

    def __init__(self, pipeline: Any, unet: torch.nn.Module) -> None:
        self._pipeline = pipeline
        self.unet = unet

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


@dataclass
class InpaintingRun:
    """One image rendered with an inpainting UNet."""

    model: LoadedInpaintModel
    inputs: InpaintInputs
    pipeline: PipelineWithUNet
    record: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """While open, every call of the inpainting UNet gets the mask and masked-image channels."""
        handle = self.model.unet.register_forward_pre_hook(self.inputs.before_unet_call, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


def attached(run: InpaintingRun | None) -> contextlib.AbstractContextManager[None]:
    """``run.attached()``, or nothing to do without an inpainting model."""
    return run.attached() if run is not None else contextlib.nullcontext()


def build_inpaint_inputs(
    pipeline: Any,
    task: ImageTask,
    render_size: tuple[int, int],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> InpaintInputs:
    """The mask at latent size and the latents of ``task.image`` with its repaint area grey.

    The image and mask are resized to ``render_size`` as ``prepare_image_start`` resizes them, so the
    extra channels line up with the start latents.
    """
    assert task.mask is not None
    image = task.image.convert("RGB")
    if image.size != render_size:
        image = image.resize(render_size, Image.Resampling.LANCZOS)
    mask = task.mask.convert("L").resize(render_size, Image.Resampling.NEAREST)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = np.where(repaint_area(mask)[..., None], np.float32(_GREY), pixels)
    blanked = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    latents = encode_image(pipeline.vae, pipeline.image_processor, blanked, tiled=task.tiled_vae)  # type: ignore[arg-type]
    latents = latents.to(device=device, dtype=dtype)
    return InpaintInputs(latent_repaint_mask(mask, (latents.shape[-2], latents.shape[-1]), latents), latents)


class InpaintModelCache:
    """Holds at most one inpainting UNet; loads another only when a job names a different one."""

    def __init__(
        self, model_dirs: ModelDirs, hash_cache: Path, *, config_dir: Path, allow_pickle: bool = False
    ) -> None:
        self._model_dirs = model_dirs
        self._config_dir = config_dir
        self._allow_pickle = allow_pickle
        self._cache = ExtraUNetCache(hash_cache, LoadedInpaintModel, setting="inpaint_model")

    @property
    def loads(self) -> int:
        """How many inpainting UNets were read from disk so far."""
        return self._cache.loads

    def clear(self) -> None:
        self._cache.clear()

    def start(
        self,
        pipeline: Any,
        request: GenerationRequest,
        render_size: tuple[int, int],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> InpaintingRun | None:
        """The inpainting run for ``request``'s image task; None when it is not an inpaint with a model."""
        task = request.image_task
        if task is None or task.mask is None or not inpaint_model_wanted(task.inpaint_model):
            return None
        model = self.get(task.inpaint_model, device=device, dtype=dtype)
        inputs = build_inpaint_inputs(pipeline, task, render_size, device=device, dtype=dtype)
        record: dict[str, Any] = model.record()
        if request.loras:
            record["loras_applied"] = False
            logger.warning(
                "inpaint model {}: the job's LoRAs are attached to the base model only; the inpainting "
                "UNet renders without them",
                model.name,
            )
        return InpaintingRun(model, inputs, PipelineWithUNet(pipeline, model.unet), {"inpaint_model": record})

    def get(self, name: str, *, device: torch.device, dtype: torch.dtype) -> LoadedInpaintModel:
        """The inpainting UNet called ``name`` on ``device``; ``InvalidInput`` when it cannot be used."""
        location = self._locate(name.strip())
        return self._cache.get(
            location, lambda found: load_inpaint_unet(found, self._config_dir), device=device, dtype=dtype
        )

    def _locate(self, name: str) -> ModelLocation:
        try:
            location = resolve_model(
                name, self._model_dirs, allow_pickle=self._allow_pickle, named_by="inpaint_model"
            )
        except ModelNotFound as exc:
            folder = self._model_dirs.download_folder("checkpoints")
            raise InvalidInput(
                exc.message,
                where=exc.where,
                hint=f"put the SDXL inpainting checkpoint in {folder}, fix the name in the job's "
                f"inpaint_model or in {SETTING}, or use 'none' to inpaint with the base model",
            ) from exc
        if location.is_tiny:
            raise InvalidInput(
                f"inpaint_model {name!r} is the base test model, not an inpainting model",
                where="inpaint_model",
                hint="name an SDXL inpainting checkpoint, or use 'none'",
            )
        return location


def load_inpaint_unet(location: ModelLocation, config_dir: Path) -> torch.nn.Module:
    """The 9-channel UNet of a single-file SDXL inpainting checkpoint or diffusers folder.

    A single file is read against the base model's UNet config in ``config_dir`` with 9 input
    channels (the only difference); only its ``model.diffusion_model.*`` tensors are read.
    Raises ``ModelNotFound`` (unreadable) or ``InvalidInput`` (not an inpainting model).
    """
    assert location.path is not None
    _require_inpainting_model(location.path)
    return load_unet(location, config_dir, in_channels=INPAINT_CHANNELS)


def _require_inpainting_model(path: Path) -> None:
    info = detect_family(path, allow_pickle=True)  # a pickle got here through resolve_model's gate
    if info.family == "sdxl_inpaint":
        return
    what = (
        "an SDXL base model (its UNet takes 4 input channels; an inpainting UNet takes 9)"
        if info.family == "sdxl"
        else f"a {info.label} file, not an SDXL inpainting model"
    )
    raise InvalidInput(
        f"inpaint_model {path.name} is {what}",
        where=str(path),
        hint="use an SDXL inpainting checkpoint (e.g. diffusers/stable-diffusion-xl-1.0-inpainting-0.1, or a "
        f"fine-tune named '...inpainting'), or set inpaint_model = 'none' / {SETTING} = '' to inpaint with "
        "the base model",
    )
