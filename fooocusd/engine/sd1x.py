"""``SD1xEngine``: SD 1.5 and SD 2.x checkpoints on diffusers' ``StableDiffusionPipeline`` components.

Loading is offline, as for SDXL: a single file is read with ``from_single_file`` against the shipped
diffusers configs and tokenizer (``configs/sd15`` for SD 1.x, ``configs/sd21`` for SD 2.x), a
diffusers folder with ``from_pretrained``. The scheduler's ``prediction_type`` is the one
``families.py`` detected (SD 2.x 768 predicts v, SD 2.x base and SD 1.x predict noise).

Denoising runs our loop (``denoise.py``): sharpness and adaptive CFG apply (sharpness works on v as
well as ε); ADM guidance does not exist for these models (their UNet takes no size ids), so the
ADM scalers are ignored and recorded as not applied. Prompt weighting, 77-token chunks, separate
workloads per prompt line, CLIP skip and ``embedding:name`` work as for SDXL
(``sd1x_conditioning.py``). With sharpness 0 and adaptive CFG ≥ CFG the loop performs exactly
``StableDiffusionPipeline.__call__``'s operations.

Size: a text-to-image job's size is an SDXL size (about 1 megapixel). It is mapped to the family's
native area with the same aspect ratio: both sides × √(native² / 1024²), rounded to multiples of 64
(1152×896 → 576×448 for SD 1.5, 896×704 for SD 2.x 768). Image tasks (vary, upscale, inpaint)
render at the size the image action asked for.

LoRAs (SD 1.x LoRAs, via ``loras.py``), the VAE override and embeddings work; a refiner and image
prompts (IP-Adapter, ControlNet: fooocusd's are SDXL models) are refused with ``InvalidInput``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from fooocusd.engine.attention_choice import AttentionChoice, choose_attention, enable_attention
from fooocusd.engine.attention_memory import MEMORY_NAME
from fooocusd.engine.base import GeneratedImage, GenerationRequest, ProgressCallback, StopCheck
from fooocusd.engine.conditioning import Conditioning, prompt_workloads
from fooocusd.engine.decode import at_requested_size, decode_latents
from fooocusd.engine.denoise import GuidanceSettings, denoise, unet_noise_predictor
from fooocusd.engine.devices import dtype_name, free_device_memory, synchronize
from fooocusd.engine.embeddings import Embeddings
from fooocusd.engine.encoding_cache import EncodingCache
from fooocusd.engine.families import FamilyInfo
from fooocusd.engine.img2img import start_for, vae_tiling
from fooocusd.engine.loras import AppliedLora, LoraAdapters, text_encoder_state
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import ModelLocation, model_sha256
from fooocusd.engine.out_of_memory import out_of_memory_retryable
from fooocusd.engine.pipeline_loading import load_errors, offline_hub, quiet_loading
from fooocusd.engine.refiner import refiner_wanted
from fooocusd.engine.render_record import NO_ADM_RECORD, guidance_record, model_facts, rendered_image
from fooocusd.engine.samplers import SchedulerChoice, build_scheduler
from fooocusd.engine.sd1x_conditioning import encode_sd1x_workloads, sd1x_conditioning
from fooocusd.engine.vae import VaeChoice, VaeOverrides
from fooocusd.errors import Interrupted, InvalidInput, ModelNotFound

CONFIGS = Path(__file__).parent / "configs"
SD1X_CONFIG_DIRS: dict[str, Path] = {"sd15": CONFIGS / "sd15", "sd2": CONFIGS / "sd21"}
"""The shipped diffusers configs + tokenizer per family (read when an engine is created)."""
SD1X_FAMILIES = frozenset(SD1X_CONFIG_DIRS)
SDXL_AREA_SIDE = 1024
SIZE_MULTIPLE = 64


def native_size(width: int, height: int, native_side: int) -> tuple[int, int]:
    """An SDXL-class ``width``×``height`` mapped to ``native_side``² pixels, same aspect, sides ×64."""
    scale = native_side / SDXL_AREA_SIDE
    return _snap(width * scale), _snap(height * scale)


def _snap(side: float) -> int:
    return max(SIZE_MULTIPLE, math.floor(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def refuse_unsupported(request: GenerationRequest, label: str) -> None:
    """``InvalidInput`` for what SD 1.x/2.x models cannot do in fooocusd."""
    if refiner_wanted(request.refiner, request.refiner_switch):
        raise InvalidInput(
            f"a refiner ({request.refiner}) was asked for, but the job's model is {label}; "
            "fooocusd's refiner hand-over is for SDXL models",
            where="refiner",
            hint="remove the refiner (refiner = 'None'), or use an SDXL model",
        )
    if request.image_prompts:
        kinds = sorted({prompt.kind for prompt in request.image_prompts})
        raise InvalidInput(
            f"image prompts ({', '.join(kinds)}) were asked for, but the job's model is {label}; "
            "fooocusd's IP-Adapter and ControlNet models are SDXL models",
            where="image_prompts",
            hint="remove the image prompts, or use an SDXL model",
        )


@dataclass(frozen=True)
class RenderedLatents:
    """Denoised latents before decoding, and what the image's record needs."""

    latents: torch.Tensor
    choice: SchedulerChoice
    size: tuple[int, int]
    timings: dict[str, float]
    record: dict[str, Any]


class SD1xEngine:
    """Renders one SD 1.x or SD 2.x model. One instance per model; not thread-safe."""

    def __init__(
        self,
        location: ModelLocation,
        info: FamilyInfo,
        *,
        model_dirs: ModelDirs,
        hash_cache: Path,
        device: torch.device,
        dtype: torch.dtype,
        attention: str = "auto",
        config_dir: Path | None = None,
        allow_unsafe_pickle: bool = False,
    ) -> None:
        if info.family not in SD1X_FAMILIES:
            raise ValueError(f"SD1xEngine renders SD 1.x/2.x models, not {info.family}")
        self._location = location
        self._info = info
        self._model_dirs = model_dirs
        self._hash_cache = hash_cache
        self._device = device
        self._dtype = dtype
        self._attention = attention
        self._attention_choice: AttentionChoice | None = None
        self._config_dir = config_dir or SD1X_CONFIG_DIRS[info.family]
        self._pipeline: StableDiffusionPipeline | None = None
        self._base_scheduler_config: dict[str, Any] = {}
        self._sha256 = ""
        self._unreported_load_seconds: float | None = None
        self.loras = LoraAdapters(model_dirs, hash_cache)
        self.vaes = VaeOverrides(model_dirs, hash_cache)
        self.embeddings = Embeddings(model_dirs, hash_cache, allow_unsafe_pickle=allow_unsafe_pickle)
        self.encodings = EncodingCache()
        self._applied: list[AppliedLora] = []

    @property
    def location(self) -> ModelLocation:
        return self._location

    @property
    def family(self) -> FamilyInfo:
        return self._info

    # -- Engine protocol -----------------------------------------------------------------------

    def load(self) -> None:
        if self._pipeline is None:
            self._load()

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GeneratedImage:
        if should_stop is not None and should_stop():
            raise Interrupted("stopped before the first step because shutdown was requested")
        started = time.perf_counter()
        with out_of_memory_retryable(request, self.free_memory):
            rendered = self.render_latents(request, progress, should_stop)
        pipeline = self._pipeline
        assert pipeline is not None
        mark = time.perf_counter()
        task = request.image_task
        with torch.inference_mode(), vae_tiling(pipeline.vae, task is not None and task.tiled_vae):
            image = decode_latents(
                pipeline.vae, pipeline.image_processor, rendered.latents, latent_statistics=False
            )
        image = at_requested_size(image, request)
        timings = {**rendered.timings, "decode": time.perf_counter() - mark}
        timings["total"] = time.perf_counter() - started + timings.get("load", 0.0)
        return self._result(request, image, rendered, timings)

    def render_latents(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> RenderedLatents:
        """Encode, draw the start and denoise; the latents before decoding (``generate`` decodes them)."""
        refuse_unsupported(request, self._info.label)
        self.load()
        pipeline = self._pipeline
        assert pipeline is not None
        timings: dict[str, float] = {}
        if self._unreported_load_seconds is not None:
            timings["load"] = self._unreported_load_seconds
            self._unreported_load_seconds = None
        applied = self.loras.apply(pipeline, request.loras)  # outside inference mode: adapters inject
        self._applied = applied
        vae = self.vaes.select(pipeline, request.vae)
        choice = build_scheduler(request.sampler, request.scheduler, self._base_scheduler_config)
        pipeline.scheduler = choice.scheduler
        width, height = self.render_size(request)
        positive_workloads, negative_workloads = prompt_workloads(request)
        settings = GuidanceSettings(
            cfg=request.cfg, sharpness=request.sharpness, adaptive_cfg=request.adaptive_cfg, adm_end=0.0
        )
        with torch.inference_mode():
            mark = time.perf_counter()
            conditioning = self._encode(
                request, positive_workloads, negative_workloads if settings.uses_cfg else None
            )
            timings["encode"] = time.perf_counter() - mark
            mark = time.perf_counter()
            generator = torch.Generator(device="cpu").manual_seed(request.seed)  # same image on any device
            start = start_for(
                pipeline,
                choice.scheduler,
                request.image_task,
                request.steps,
                (width, height),
                seed=request.seed,
                generator=generator,
                device=self._device,
                dtype=conditioning.positive.tokens.dtype,
            )
            latents = denoise(
                unet_noise_predictor(pipeline.unet, first_call_index=start.start_index),
                choice.scheduler,
                start.latents,
                conditioning,
                settings,
                generator=generator,
                progress=progress,
                should_stop=should_stop,
                start_index=start.start_index,
                blend=start.blend,
            )
            synchronize(self._device)
            timings["denoise"] = time.perf_counter() - mark
        record = guidance_record(request, settings, positive_workloads, negative_workloads, adm=NO_ADM_RECORD)
        record.update(_components_record(applied, vae), embeddings=self.embeddings.record())
        return RenderedLatents(latents, choice, (width, height), timings, record)

    def free_memory(self) -> None:
        self.encodings.clear()  # after running out of memory, every megabyte counts
        free_device_memory(self._device)

    def unload(self) -> None:
        """Drop the pipeline (and its adapters, VAE override and embeddings) and free the memory."""
        self._pipeline = None
        self.loras.forget()
        self.vaes = VaeOverrides(self._model_dirs, self._hash_cache)  # a fresh one drops the cached override
        self.embeddings.attach(None)
        self.encodings.attach(None)
        self.free_memory()

    def describe(self) -> dict[str, Any]:
        return {
            **model_facts(self._location, self._sha256),
            "model_family": self._info.family,
            "model_family_label": self._info.label,
            "prediction_type": self._info.prediction,
            "loaded": self._pipeline is not None,
            "device": str(self._device),
            "dtype": dtype_name(self._dtype),
            "attention": self._attention_choice.backend if self._attention_choice else self._attention,
            "config_dir": str(self._config_dir),
            "reduced_size": False,
        }

    def render_size(self, request: GenerationRequest) -> tuple[int, int]:
        if request.image_task is not None:
            return request.width, request.height
        return native_size(request.width, request.height, self._info.resolution or 512)

    # -- loading -------------------------------------------------------------------------------

    def _load(self) -> None:
        started = time.perf_counter()
        path = self._location.path
        if path is None:
            raise ModelNotFound(f"{self._location.name} has no file to load", where="engine.model")
        with offline_hub(), quiet_loading(), load_errors(path, self._info.label, self._info.label):
            if self._location.kind == "diffusers":
                pipeline = StableDiffusionPipeline.from_pretrained(
                    str(path), local_files_only=True, dtype=self._dtype, safety_checker=None,
                    requires_safety_checker=False,
                )  # fmt: skip
            else:
                pipeline = StableDiffusionPipeline.from_single_file(
                    str(path), config=str(self._config_dir), local_files_only=True, dtype=self._dtype,
                    safety_checker=None, requires_safety_checker=False,
                )  # fmt: skip
        pipeline.to(self._device)
        if pipeline.unet.dtype != self._dtype:
            pipeline.to(dtype=self._dtype)
        memory = self._hash_cache.parent / MEMORY_NAME  # the cache folder
        self._attention_choice = choose_attention(
            self._attention, pipeline.unet, self._device, self._dtype, memory=memory
        )
        enable_attention(pipeline, self._attention_choice.backend, self._device)
        pipeline.set_progress_bar_config(disable=True)
        scheduler_config = dict(pipeline.scheduler.config)
        if self._info.prediction is not None:
            scheduler_config["prediction_type"] = self._info.prediction
        self._base_scheduler_config = scheduler_config
        self._sha256 = model_sha256(self._location, self._hash_cache)
        self._pipeline = pipeline
        self.loras.forget()
        self.vaes.attach(pipeline)
        self.embeddings.attach(pipeline)
        self.encodings.attach(pipeline)
        self._unreported_load_seconds = time.perf_counter() - started

    # -- generation ----------------------------------------------------------------------------

    def _encode(
        self,
        request: GenerationRequest,
        positive_workloads: tuple[str, ...],
        negative_workloads: tuple[str, ...] | None,
    ) -> Conditioning:
        pipeline = self._pipeline
        assert pipeline is not None
        self.embeddings.start_image()

        def encode(workloads: tuple[str, ...]) -> Any:
            return encode_sd1x_workloads(
                pipeline,
                self.embeddings.rewrite(pipeline, workloads),
                clip_skip=request.clip_skip,
                family=self._info.family,
                device=self._device,
                cache=self.encodings,
                encoder_state=text_encoder_state(self._applied),
            )

        positive = encode(positive_workloads)
        negative = encode(negative_workloads) if negative_workloads is not None else None
        return sd1x_conditioning(positive, negative)

    def _result(
        self,
        request: GenerationRequest,
        image: Image.Image,
        rendered: RenderedLatents,
        timings: dict[str, float],
    ) -> GeneratedImage:
        result = rendered_image(
            request,
            image,
            rendered.choice,
            timings,
            location=self._location,
            sha256=self._sha256,
            device=self._device,
            dtype=self._dtype,
            reduced_size=False,
        )
        result.extra.update(
            {
                "model_family": self._info.family,
                "model_family_label": self._info.label,
                "prediction_type": self._info.prediction,
                **rendered.record,
            }
        )
        return result


def _components_record(applied: list[AppliedLora], vae: VaeChoice) -> dict[str, Any]:
    return {"loras": [item.record() for item in applied], "refiner": None, **vae.record()}
