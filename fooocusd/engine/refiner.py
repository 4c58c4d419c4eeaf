"""The refiner: a second UNet that takes over the last part of one sampling run (Fooocus's "joint" swap).

The base UNet predicts noise for the first ``round(steps × refiner_switch)`` steps and the refiner
UNet for the rest, inside the same scheduler run, so the sampler's state (its history, its noise)
carries across the switch. Only the UNet of the refiner checkpoint is loaded: as in Fooocus, its
conditioning is derived from the base model's text encoders.

* An SDXL refiner attends to the second text encoder (CLIP-G) only — the last channels of the
  base's token embeddings — and its micro-conditioning is (original h, w, crop top, left,
  aesthetic score), with aesthetic score 6.0 for the positive side and 2.5 for the negative one
  (diffusers' ``StableDiffusionXLImg2ImgPipeline._get_add_time_ids``).
* Another SDXL base model used as refiner takes the base's conditioning unchanged.

The refiner stays loaded between jobs and is reloaded only when a job names another one. A switch
of 1.0, an empty name, or ``none`` means no refiner; so does naming the base model's own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fooocusd.engine.denoise import NoisePredictor, unet_noise_predictor
from fooocusd.engine.extra_unet import ExtraUNetCache, LoadedUNet, load_unet
from fooocusd.engine.models import (
    NO_REFINER,
    SDXL_CONFIG_DIR,
    TINY_REFINER,
    ModelLocation,
    ModelRoots,
    autov2,
    checkpoint_family,
    resolve_model,
)
from fooocusd.engine.tiny import build_tiny_refiner_unet
from fooocusd.errors import InvalidInput, ModelNotFound

REFINER_CONFIG_DIR = Path(__file__).parent / "configs" / "sdxl_refiner"
"""The SDXL refiner 1.0 UNet config (no weights), for loading a single-file refiner offline."""
POSITIVE_AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5


class LoadedRefiner(LoadedUNet):
    """A refiner UNet ready on the device, and what the metadata says about it."""

    @property
    def attends_to_clip_g_only(self) -> bool:
        return _is_refiner_shaped(self.unet)

    @property
    def token_width(self) -> int:
        return int(self.unet.config.cross_attention_dim)


def refiner_wanted(name: str, switch: float) -> bool:
    return name.strip().lower() not in NO_REFINER and switch < 1.0


def switch_call(total_calls: int, steps: int, switch: float) -> int:
    """The first model call that goes to the refiner.

    Fooocus switches at step ``round(steps × switch)``; a second-order scheduler makes more than one
    model call per step, so the step is scaled to the scheduler's own call count.
    """
    switch_step = round(steps * switch)
    return round(total_calls * switch_step / steps)


class RefinerCache:
    """Holds at most one refiner UNet; loads another only when a job names a different one."""

    def __init__(
        self, models_dir: ModelRoots, hash_cache: Path, *, base_config_dir: Path = SDXL_CONFIG_DIR
    ) -> None:
        self._models_dir = models_dir
        self._base_config_dir = base_config_dir
        self._cache = ExtraUNetCache(hash_cache, LoadedRefiner, setting="refiner")

    @property
    def loads(self) -> int:
        """How many refiner UNets were read from disk so far."""
        return self._cache.loads

    def get(
        self, name: str, *, base: ModelLocation, device: torch.device, dtype: torch.dtype
    ) -> LoadedRefiner | None:
        """The refiner called ``name`` on ``device``; None when it is the base model itself."""
        location = self._locate(name.strip())
        if location == base or (location.path is not None and location.path == base.path):
            return None  # Fooocus: a refiner that is the base model is no refiner
        return self._cache.get(location, self._load_unet, device=device, dtype=dtype)

    def _locate(self, name: str) -> ModelLocation:
        if name == TINY_REFINER:
            return ModelLocation(kind="tiny", name=TINY_REFINER)
        try:
            return resolve_model(name, self._models_dir, named_by="refiner")
        except ModelNotFound as exc:
            raise InvalidInput(exc.message, where=exc.where, hint=exc.hint) from exc

    def _load_unet(self, location: ModelLocation) -> torch.nn.Module:
        if location.kind == "tiny":
            return build_tiny_refiner_unet()
        assert location.path is not None
        if location.kind == "diffusers":
            return load_unet(location, None)
        family = checkpoint_family(location.path)
        configs = {"sdxl": self._base_config_dir, "sdxl_refiner": REFINER_CONFIG_DIR}
        if family not in configs:
            what = "a Stable Diffusion 1.x/2.x model" if family == "sd1_or_sd2" else f"a {family} file"
            raise InvalidInput(
                f"refiner {location.path.name} is {what}; fooocusd refines with SDXL models only",
                where=str(location.path),
                hint="use the SDXL refiner (sd_xl_refiner_1.0.safetensors) or another SDXL checkpoint, "
                "or set refiner = 'none'",
            )
        return load_unet(location, configs[family])


@dataclass(frozen=True)
class RefinerTimeIds:
    """The refiner's micro-conditioning for the negative and positive sides, each (1, 5)."""

    negative: torch.Tensor
    positive: torch.Tensor

    @classmethod
    def for_size(cls, height: int, width: int, *, dtype: torch.dtype, device: torch.device) -> RefinerTimeIds:
        def ids(score: float) -> torch.Tensor:
            return torch.tensor([[height, width, 0, 0, score]], dtype=dtype, device=device)

        return cls(negative=ids(NEGATIVE_AESTHETIC_SCORE), positive=ids(POSITIVE_AESTHETIC_SCORE))

    def batch(self, size: int, cfg: bool | None = None) -> torch.Tensor:
        """Ids for ``size`` UNet rows: (negatives, positives) under CFG, positives alone without.

        ``cfg`` None reads a size of 2 as one image under CFG (the single-image loop).
        """
        if cfg is None:
            cfg = size == 2
        if not cfg:
            return self.positive.repeat(size, 1)
        images = size // 2
        return torch.cat([self.negative.repeat(images, 1), self.positive.repeat(images, 1)])


def switching_noise_predictor(
    base: NoisePredictor,
    refiner: LoadedRefiner,
    first_refiner_call: int,
    time_ids: RefinerTimeIds,
    *,
    first_call_index: int = 0,
    cfg: bool | None = None,
) -> NoisePredictor:
    """``base`` before model call ``first_refiner_call`` of the full schedule, the refiner from it on.

    ``first_call_index`` is the schedule position of the first call (img2img starts part-way in);
    ``cfg`` says whether the loop batches negatives with positives (None: only for a single image).
    """
    refine = unet_noise_predictor(refiner.unet)
    clip_g_only = refiner.attends_to_clip_g_only
    width = refiner.token_width
    calls = first_call_index

    def predict(
        model_input: torch.Tensor,
        timestep: torch.Tensor,
        tokens: torch.Tensor,
        pooled: torch.Tensor,
        base_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        nonlocal calls
        index = calls
        calls += 1
        if index < first_refiner_call:
            return base(model_input, timestep, tokens, pooled, base_time_ids)
        if clip_g_only:
            # The base's tokens are [CLIP-L | CLIP-G] side by side; the refiner reads CLIP-G alone.
            return refine(
                model_input, timestep, tokens[..., -width:], pooled, time_ids.batch(model_input.shape[0], cfg)
            )
        return refine(model_input, timestep, tokens, pooled, base_time_ids)

    return predict


def refiner_record(refiner: LoadedRefiner | None, requested: str, switch: float, step: int) -> dict[str, Any]:
    """What the metadata says: the refiner used (name, hashes, switch) or that none ran."""
    if refiner is None:
        return {"refiner": None, "refiner_switch": switch, "refiner_requested": requested.strip()}
    return {
        "refiner": {
            "name": refiner.name,
            "sha256": refiner.sha256,
            "hash": autov2(refiner.sha256),
            "switch": switch,
            "switch_step": step,
        },
        "refiner_switch": switch,
    }


def _is_refiner_shaped(unet: torch.nn.Module) -> bool:
    """An SDXL refiner's added embedding is 5 time ids plus the pooled CLIP-G vector, whose width is
    also its cross-attention width (2560 = 5 × 256 + 1280); a base UNet has 6 ids and attends to
    CLIP-L + CLIP-G, so the same sum does not hold for it (2816 ≠ 5 × 256 + 2048)."""
    config = unet.config
    return config.projection_class_embeddings_input_dim == 5 * config.addition_time_embed_dim + int(
        config.cross_attention_dim
    )
