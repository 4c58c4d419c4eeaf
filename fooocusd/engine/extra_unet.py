"""A second UNet next to the resident pipeline (the refiner's, an inpainting model's): loading and caching.

Only the UNet of such a checkpoint is read; the base pipeline's text encoders and VAE stay in use.
``ExtraUNetCache`` keeps at most one of them and loads another only when a job names a different file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from fooocusd.engine.models import ModelLocation, model_sha256
from fooocusd.engine.pipeline_loading import load_errors, offline_hub, quiet_loading
from fooocusd.errors import InvalidInput, ModelNotFound


@dataclass
class LoadedUNet:
    """An extra UNet on the device, and the facts the metadata gives about it."""

    name: str
    path: Path | None
    sha256: str
    unet: torch.nn.Module
    key: tuple[str, str] = ("", "")
    load_seconds: float = 0.0


LoadedT = TypeVar("LoadedT", bound=LoadedUNet)


def load_unet(
    location: ModelLocation, config_dir: Path | None, **single_file_options: Any
) -> torch.nn.Module:
    """The ``unet`` of a diffusers folder, or of a single-file checkpoint read against ``config_dir``
    (``single_file_options`` override that config, e.g. ``in_channels``). Offline and quiet; an unreadable
    file is ``ModelNotFound``."""
    from diffusers import UNet2DConditionModel

    path = location.path
    assert path is not None
    with offline_hub(), quiet_loading(), load_errors(path):
        if location.kind == "diffusers":
            return UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True)
        return UNet2DConditionModel.from_single_file(
            str(path), config=str(config_dir), subfolder="unet", local_files_only=True, **single_file_options
        )


class ExtraUNetCache(Generic[LoadedT]):
    """Holds at most one extra UNet; loads another only when asked for a different one."""

    def __init__(self, hash_cache: Path, loaded_type: type[LoadedT], *, setting: str) -> None:
        """``loaded_type`` wraps each loaded UNet; ``setting`` prefixes the errors (``refiner: ...``)."""
        self._hash_cache = hash_cache
        self._loaded_type = loaded_type
        self._setting = setting
        self._current: LoadedT | None = None
        self.loads = 0

    def clear(self) -> None:
        self._current = None

    def get(
        self,
        location: ModelLocation,
        load: Callable[[ModelLocation], torch.nn.Module],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> LoadedT:
        """The UNet at ``location`` on ``device`` (``load`` reads it when it is not the cached one).

        A ``ModelNotFound`` from ``load`` becomes ``InvalidInput``: a job naming a model that cannot
        load can never succeed.
        """
        key = (location.kind, str(location.path or location.name))
        current = self._current
        if current is not None and current.key == key:
            current.unet.to(device=device, dtype=dtype)
            return current
        self._current = None  # free the old one before loading the next
        started = time.perf_counter()
        # Parameters made under the engine's inference mode would be inference tensors for good.
        with torch.inference_mode(False):
            try:
                unet = load(location)
            except ModelNotFound as exc:
                raise InvalidInput(f"{self._setting}: {exc.message}", where=exc.where, hint=exc.hint) from exc
            unet = unet.to(device=device, dtype=dtype).eval()
        self._current = self._loaded_type(
            name=location.name,
            path=location.path,
            sha256=model_sha256(location, self._hash_cache),
            unet=unet,
            key=key,
            load_seconds=time.perf_counter() - started,
        )
        self.loads += 1
        return self._current
