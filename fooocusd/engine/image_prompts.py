"""Image prompts in the engine: the UNet extras of every slot, and what the sidecar records.

``build_unet_extras`` is called once per image, before the denoising loop. ControlNet slots
(``pyracanny``, ``cpds``, ``depth``) are handled here; IP-Adapter slots (``image_prompt``, ``face``)
are handed to ``fooocusd.engine.ip_adapter.unet_extras(pipeline, request, conditioning, device, dtype)``
when that module exists. All providers' residuals and keyword arguments are merged by the loop.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fooocusd.engine.base import GenerationRequest, ImagePrompt
from fooocusd.engine.conditioning import Conditioning
from fooocusd.engine.controlnet.apply import control_net_extras
from fooocusd.engine.controlnet.models import CONTROL_TYPES, ControlNetConfig, ControlNetModels
from fooocusd.engine.controlnet.preprocess import cpds, fit_to_size, pyracanny
from fooocusd.engine.denoise import UNetExtras
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.errors import InvalidInput

IP_ADAPTER_TYPES = ("image_prompt", "face")
IP_ADAPTER_MODULE = "fooocusd.engine.ip_adapter"
IMAGE_PROMPT_DEFAULTS: dict[str, tuple[float, float]] = {
    # type: (weight, stop_at), Fooocus's defaults; depth (not in Fooocus) as its other ControlNets.
    "image_prompt": (0.6, 0.5),
    "face": (0.75, 0.9),
    "pyracanny": (1.0, 0.5),
    "cpds": (1.0, 0.5),
    "depth": (1.0, 0.5),
}
CONTROL_IMAGES_KEY = "control_images"
"""``GeneratedImage.extra`` key of the preprocessed maps (``ControlImage``s); not JSON: pop it."""
_MAP_CACHE_SIZE = 8


@dataclass(frozen=True, eq=False)
class ControlImage:
    """A preprocessed control map, for ``save_control_images``. ``slot`` counts from 1 in job order."""

    slot: int
    kind: str
    image: Image.Image


@dataclass
class ImagePromptExtras:
    """What ``build_unet_extras`` gives: the providers, and the facts for ``GeneratedImage.extra``."""

    extras: list[UNetExtras] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


class ImagePromptState:
    """The engine's long-lived image-prompt parts: ControlNet models and recently preprocessed maps."""

    def __init__(
        self, model_dirs: ModelDirs, hash_cache: Path, config: ControlNetConfig | None = None
    ) -> None:
        self.model_dirs = model_dirs
        self.hash_cache = hash_cache
        self.config = config or ControlNetConfig()
        self.models = ControlNetModels(model_dirs, hash_cache, self.config)
        self._maps: list[tuple[Image.Image, str, tuple[int, int], Image.Image]] = []

    def control_map(
        self, prompt: ImagePrompt, size: tuple[int, int], *, device: torch.device, dtype: torch.dtype
    ) -> Image.Image:
        """``prompt``'s image fitted to ``size`` and preprocessed; reused across a job's images."""
        for image, kind, cached_size, control in self._maps:
            if image is prompt.image and kind == prompt.kind and cached_size == size:
                return control
        fitted = fit_to_size(prompt.image, *size)
        if prompt.kind == "pyracanny":
            control = pyracanny(fitted)
        elif prompt.kind == "cpds":
            control = cpds(fitted)
        else:
            control = self.models.depth_estimator(device=device, dtype=dtype)(fitted)
        # Holding the source image keeps its identity unique while the entry lives.
        self._maps = [(prompt.image, prompt.kind, size, control), *self._maps][:_MAP_CACHE_SIZE]
        return control


def default_weight_and_stop(kind: str) -> tuple[float, float]:
    """Fooocus's default (weight, stop_at) for an image prompt type."""
    return IMAGE_PROMPT_DEFAULTS[kind]


def build_unet_extras(
    state: ImagePromptState,
    pipeline: Any,
    request: GenerationRequest,
    conditioning: Conditioning,
    scheduler: Any,
    *,
    size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> ImagePromptExtras:
    """Providers for every image prompt of ``request``; ``size`` is the render size (width, height).

    ``scheduler`` has its timesteps set (the full schedule; img2img starts part-way into it).
    Raises ``InvalidInput`` when a model a slot needs is missing or unusable.
    """
    result = ImagePromptExtras()
    records: list[dict[str, Any]] = []
    control_images: list[ControlImage] = []
    used_paths: list[Path] = []
    host_timesteps: Sequence[float] = ()
    if any(prompt.kind in CONTROL_TYPES for prompt in request.image_prompts):
        host_timesteps = [float(t) for t in scheduler.timesteps.tolist()]  # one device→host copy
    for slot, prompt in enumerate(request.image_prompts, start=1):
        record: dict[str, Any] = {
            "type": prompt.kind,
            "source": prompt.source,
            "weight": prompt.weight,
            "stop_at": prompt.stop_at,
        }
        if prompt.kind in CONTROL_TYPES:
            net = state.models.control_net(prompt.kind, device=device, dtype=dtype)
            used_paths.append(net.path)
            control_map = state.control_map(prompt, size, device=device, dtype=dtype)
            result.extras.append(
                control_net_extras(
                    net,
                    control_map,
                    weight=prompt.weight,
                    stop_at=prompt.stop_at,
                    host_timesteps=host_timesteps,
                    softness=state.config.softness,
                    device=device,
                    dtype=dtype,
                )
            )
            record.update(net.record())
            control_images.append(ControlImage(slot, prompt.kind, control_map))
        records.append(record)
    state.models.retain(used_paths)
    ip_adapter = _ip_adapter_module(request)
    if ip_adapter is not None:
        result.extras.extend(
            ip_adapter.unet_extras(
                pipeline, request, conditioning, device, dtype, model_dirs=state.model_dirs
            )
        )
        for record, prompt in zip(records, request.image_prompts, strict=True):
            if prompt.kind in IP_ADAPTER_TYPES:
                record.update(
                    ip_adapter.image_prompt_record(
                        prompt, model_dirs=state.model_dirs, hash_cache=state.hash_cache
                    )
                )
    if records:
        result.record = {"image_prompts": records, CONTROL_IMAGES_KEY: control_images}
    if any(prompt.kind in CONTROL_TYPES for prompt in request.image_prompts):
        result.record["controlnet_softness"] = state.config.softness
    return result


def _ip_adapter_module(request: GenerationRequest) -> Any:
    """``fooocusd.engine.ip_adapter`` when it exists (called for every image: it restores the plain
    UNet after an IP-Adapter job); ``None`` without it, or ``InvalidInput`` when the request needs it."""
    if importlib.util.find_spec(IP_ADAPTER_MODULE) is not None:
        return importlib.import_module(IP_ADAPTER_MODULE)
    wanted = sorted({prompt.kind for prompt in request.image_prompts if prompt.kind in IP_ADAPTER_TYPES})
    if wanted:
        raise InvalidInput(
            f"image prompts of type {', '.join(wanted)} (IP-Adapter) are not supported by this installation",
            where="image_prompts",
            hint="use pyracanny, cpds or depth, or remove those image prompts",
        )
    return None
