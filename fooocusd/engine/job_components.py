"""Per-job add-ons around the resident base model: LoRAs, the VAE override and the refiner.

``SDXLEngine`` owns one ``JobComponents``. ``attach`` is called whenever a new base pipeline is
loaded; ``prepare`` before each image (outside inference mode: adapters are injected there);
``noise_predictor`` when the denoising loop starts; ``record`` for the image's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.conditioning import Conditioning
from fooocusd.engine.denoise import NoisePredictor, UNetExtras, unet_noise_predictor
from fooocusd.engine.loras import AppliedLora, LoraAdapters, text_encoder_state
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import ModelLocation, ModelRoots
from fooocusd.engine.refiner import (
    LoadedRefiner,
    RefinerCache,
    RefinerTimeIds,
    refiner_record,
    refiner_wanted,
    switch_call,
    switching_noise_predictor,
)
from fooocusd.engine.unet_graphs import UNetGraphs
from fooocusd.engine.vae import VaeChoice, VaeOverrides


class JobComponents:
    """The LoRA adapters, VAE override and refiner chosen for the current image."""

    def __init__(self, models: ModelRoots, hash_cache: Path, *, config_dir: Path) -> None:
        model_dirs = ModelDirs.of(models)
        self.loras = LoraAdapters(model_dirs, hash_cache)
        self.vaes = VaeOverrides(model_dirs, hash_cache)
        self.refiners = RefinerCache(model_dirs, hash_cache, base_config_dir=config_dir)
        self._applied: list[AppliedLora] = []
        self._vae = VaeChoice(name="default")
        self._refiner: LoadedRefiner | None = None
        self._refiner_step: int | None = None

    def attach(self, pipeline: Any, *, fold_loras: bool = True) -> None:
        """A new base pipeline is resident: its adapters and VAE are its own. ``fold_loras``: whether
        its UNet's weights may take the active LoRAs in (``AccelerationPlan.folds_loras``)."""
        self.loras.forget()
        self.loras.fold = fold_loras
        self.vaes.attach(pipeline)

    def prepare(
        self,
        pipeline: Any,
        request: GenerationRequest,
        *,
        base: ModelLocation,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Activate the request's LoRAs, VAE and refiner. Raises ``InvalidInput`` for a bad name or file."""
        self._applied = self.loras.apply(pipeline, request.loras)
        self._vae = self.vaes.select(pipeline, request.vae)
        self._refiner = None
        self._refiner_step = None
        if refiner_wanted(request.refiner, request.refiner_switch):
            self._refiner = self.refiners.get(request.refiner, base=base, device=device, dtype=dtype)

    @property
    def text_encoder_state(self) -> tuple[tuple[str, float], ...]:
        """The active LoRAs, which may change the text encoders' output (``EncodingCache`` keys)."""
        return text_encoder_state(self._applied)

    def noise_predictor(
        self,
        pipeline: Any,
        request: GenerationRequest,
        scheduler: Any,
        conditioning: Conditioning,
        *,
        size: tuple[int, int],
        start_index: int = 0,
        extras: Sequence[UNetExtras] = (),
        graphs: UNetGraphs | None = None,
    ) -> NoisePredictor:
        """The base UNet's predictor, or one that hands over to the refiner at the switch step.

        ``extras`` (ControlNet, IP-Adapter ...) apply to the base UNet's calls only. ``graphs``
        replays the base UNet's calls when nothing a CUDA graph cannot see is in play.
        """
        total = len(scheduler.timesteps)
        graphed = graphs.predictor(pipeline.unet) if graphs is not None and not extras else None
        base = graphed or unet_noise_predictor(pipeline.unet, extras, first_call_index=start_index)
        if self._refiner is None:
            return base
        first = switch_call(total, request.steps, request.refiner_switch)
        if first >= total:
            self._refiner = None  # the switch falls after the last step: the refiner never runs
            return base
        self._refiner_step = round(request.steps * request.refiner_switch)
        width, height = size
        tokens = conditioning.positive.tokens
        time_ids = RefinerTimeIds.for_size(height, width, dtype=tokens.dtype, device=tokens.device)
        return switching_noise_predictor(
            base,
            self._refiner,
            first,
            time_ids,
            first_call_index=start_index,
            cfg=conditioning.negative is not None,
        )

    def record(self, request: GenerationRequest) -> dict[str, Any]:
        """``loras``, ``refiner`` and ``vae`` facts for ``GeneratedImage.extra``."""
        return {
            "loras": [applied.record() for applied in self._applied],
            **refiner_record(self._refiner, request.refiner, request.refiner_switch, self._refiner_step or 0),
            **self._vae.record(),
        }
