"""``SDXLEngine``: the ``Engine`` protocol on top of diffusers' ``StableDiffusionXLPipeline``.

Loading is strictly offline. A single-file checkpoint is read with ``from_single_file`` against the
diffusers-format configs and CLIP tokenizers shipped in ``configs/sdxl_base`` (diffusers would
otherwise try to download them); a diffusers folder is read with ``from_pretrained``. The hub's
offline switches are forced on while either runs.

The model stays loaded between jobs. A job that names another model swaps it in (one model is
resident at a time).

Denoising runs our own loop (``denoise.py``) with Fooocus's sharpness, adaptive CFG and ADM
scaling; each prompt line is encoded as its own workload (``conditioning.py``). With those
refinements off the loop reproduces ``StableDiffusionXLPipeline.__call__`` exactly.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from safetensors import SafetensorError

from fooocusd.engine.acceleration import AccelerationOptions, Accelerator
from fooocusd.engine.base import GeneratedImage, GenerationRequest, ProgressCallback, StopCheck
from fooocusd.engine.conditioning import (
    Conditioning,
    adm_time_ids,
    encode_workloads,
    prompt_workloads,
)
from fooocusd.engine.controlnet.models import ControlNetConfig
from fooocusd.engine.denoise import GuidanceSettings, denoise, initial_latents
from fooocusd.engine.embeddings import Embeddings
from fooocusd.engine.image_prompts import ImagePromptState, build_unet_extras
from fooocusd.engine.img2img import ImageStart, prepare_image_start, vae_tiling
from fooocusd.engine.inpaint_model import InpaintModelCache, attached
from fooocusd.engine.job_components import JobComponents
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import (
    SDXL_CONFIG_DIR,
    TINY_MODEL,
    ModelLocation,
    ModelRoots,
    autov2,
    model_sha256,
    require_sdxl_checkpoint,
    resolve_model,
)
from fooocusd.engine.samplers import SchedulerChoice, build_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline, tiny_render_size
from fooocusd.errors import ConfigError, Interrupted, InvalidInput, ModelNotFound, OutOfMemory

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_MIN_SIDE, _MAX_SIDE, _SIDE_MULTIPLE = 64, 4096, 8
_MAX_STEPS = 200
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class SDXLEngine:
    """Renders SDXL images with diffusers. One instance per worker; not thread-safe."""

    def __init__(
        self,
        location: ModelLocation,
        *,
        models_dir: ModelRoots,
        hash_cache: Path,
        device: str = "auto",
        dtype: str = "auto",
        attention: str = "sdpa",
        acceleration: AccelerationOptions | None = None,
        config_dir: Path = SDXL_CONFIG_DIR,
        configured_model: str = "",
        allow_unsafe_pickle: bool = False,
        controlnet: ControlNetConfig | None = None,
    ) -> None:
        self._allow_unsafe_pickle = allow_unsafe_pickle
        self._location = location
        self._default_location = location
        self._configured_model = configured_model
        self._models_dir = models_dir
        self._model_dirs = ModelDirs.of(models_dir)
        self._hash_cache = hash_cache
        self._config_dir = config_dir
        self._attention = attention
        self._device = pick_device(device)
        self._dtype = pick_dtype(dtype, self._device)
        self._accelerator = Accelerator(
            acceleration or AccelerationOptions(), self._device, self._dtype, attention=attention
        )
        self._pipeline: StableDiffusionXLPipeline | None = None
        self._base_scheduler_config: dict[str, Any] = {}
        self._sha256 = ""
        self._unreported_load_seconds: float | None = None
        self._components = JobComponents(models_dir, hash_cache, config_dir=config_dir)
        self._image_prompts = ImagePromptState(self._model_dirs, hash_cache, controlnet)
        self._embeddings = Embeddings(self._model_dirs, hash_cache, allow_unsafe_pickle=allow_unsafe_pickle)
        self._inpaint_models = InpaintModelCache(
            self._model_dirs, hash_cache, config_dir=config_dir, allow_pickle=allow_unsafe_pickle
        )

    # -- Engine protocol -----------------------------------------------------------------------

    def load(self) -> None:
        """Load the configured model (once); hashes it through the hash cache."""
        if self._pipeline is None:
            self._load(self._location)

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GeneratedImage:
        _validate(request)
        if should_stop is not None and should_stop():
            raise Interrupted("stopped before the first step because shutdown was requested")
        started = time.perf_counter()
        try:
            self._switch_model_for(request.model)
            # LoRAs, VAE and refiner for this image; outside inference mode, as adapters are injected.
            self._components.prepare(
                self._pipeline, request, base=self._location, device=self._device, dtype=self._dtype
            )
            return self._generate(request, progress, should_stop, started)
        except torch.cuda.OutOfMemoryError as exc:
            self.free_memory()
            raise _out_of_memory(request, exc) from exc
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            self.free_memory()
            raise _out_of_memory(request, exc) from exc

    def unload(self) -> None:
        """Drop the resident pipeline and its add-ons (LoRAs, VAE, refiner, embeddings, ControlNets)."""
        self._pipeline = None
        self._components = JobComponents(self._models_dir, self._hash_cache, config_dir=self._config_dir)
        self._image_prompts = ImagePromptState(self._model_dirs, self._hash_cache, self._image_prompts.config)
        self._embeddings.attach(None)
        self._inpaint_models.clear()
        self.free_memory()

    def free_memory(self) -> None:
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._device.type == "mps":
            torch.mps.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self._location.name,
            "model_kind": self._location.kind,
            "model_path": str(self._location.path or ""),
            "model_sha256": self._sha256,
            "model_hash": autov2(self._sha256),
            "loaded": self._pipeline is not None,
            "device": str(self._device),
            "dtype": _dtype_name(self._dtype),
            "attention": self._attention,
            "acceleration": self._accelerator.record(),
            "config_dir": str(self._config_dir),
            "reduced_size": self._location.is_tiny,
        }

    # -- loading -------------------------------------------------------------------------------

    def _switch_model_for(self, requested: str) -> None:
        target = self._target_location(requested)
        if target == self._location and self._pipeline is not None:
            return
        self._pipeline = None
        self.free_memory()
        self._location = target
        try:
            self._load(target)
        except ModelNotFound as exc:
            if target == self._default_location:
                raise
            # A job naming a model that cannot be loaded can never succeed as it is.
            raise InvalidInput(exc.message, hint=exc.hint, where=exc.where) from exc

    def _target_location(self, requested: str) -> ModelLocation:
        name = requested.strip()
        if not name or name == self._configured_model:
            return self._default_location
        if name == self._location.name:
            return self._location
        try:
            return resolve_model(name, self._model_dirs, allow_pickle=self._allow_unsafe_pickle)
        except ModelNotFound as exc:
            raise InvalidInput(exc.message, hint=exc.hint, where=exc.where) from exc

    def _load(self, location: ModelLocation) -> None:
        started = time.perf_counter()
        if location.is_tiny:
            pipeline = build_tiny_sdxl_pipeline(_default_scheduler(self._config_dir))
        elif location.kind == "single_file":
            assert location.path is not None
            require_sdxl_checkpoint(location.path)
            pipeline = self._from_single_file(location.path)
        else:
            assert location.path is not None
            pipeline = self._from_folder(location.path)
        self._prepare(pipeline)
        self._sha256 = model_sha256(location, self._hash_cache)
        self._base_scheduler_config = dict(pipeline.scheduler.config)
        self._pipeline = pipeline
        self._components.attach(pipeline)
        self._embeddings.attach(pipeline)
        self._unreported_load_seconds = time.perf_counter() - started

    def _from_single_file(self, path: Path) -> StableDiffusionXLPipeline:
        with offline_hub(), _quiet_loading(), _load_errors(path):
            return StableDiffusionXLPipeline.from_single_file(
                str(path),
                config=str(self._config_dir),
                local_files_only=True,
                dtype=self._dtype,
                add_watermarker=False,
            )

    def _from_folder(self, path: Path) -> StableDiffusionXLPipeline:
        with offline_hub(), _quiet_loading(), _load_errors(path):
            return StableDiffusionXLPipeline.from_pretrained(
                str(path), local_files_only=True, dtype=self._dtype, add_watermarker=False
            )

    def _prepare(self, pipeline: StableDiffusionXLPipeline) -> None:
        if self._attention == "xformers":
            try:
                pipeline.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError) as exc:
                raise ConfigError(
                    f"engine.attention = 'xformers' but xformers cannot be used: {exc}",
                    where="engine.attention",
                    hint="install fooocusd[xformers] or set engine.attention = 'sdpa'",
                ) from exc
        # Placement (engine.vram), VAE precision, channels_last, fused QKV, torch.compile: acceleration.py.
        self._accelerator.apply(pipeline)
        pipeline.set_progress_bar_config(disable=True)

    # -- generation ----------------------------------------------------------------------------

    def _generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        started: float,
    ) -> GeneratedImage:
        pipeline = self._pipeline
        assert pipeline is not None
        choice = build_scheduler(request.sampler, request.scheduler, self._base_scheduler_config)
        pipeline.scheduler = choice.scheduler
        width, height = self._render_size(request)
        timings: dict[str, float] = {}
        if self._unreported_load_seconds is not None:
            timings["load"] = self._unreported_load_seconds
            self._unreported_load_seconds = None

        positive_workloads, negative_workloads = prompt_workloads(request)
        settings = GuidanceSettings(
            cfg=request.cfg,
            sharpness=request.sharpness,
            adaptive_cfg=request.adaptive_cfg,
            adm_end=request.adm_scaler_end,
        )
        with torch.inference_mode(), self._thread_policy():
            mark = time.perf_counter()
            conditioning = self._encode(
                pipeline, request, positive_workloads, negative_workloads if settings.uses_cfg else None
            )
            timings["encode"] = time.perf_counter() - mark

            mark = time.perf_counter()
            # Seeded on the CPU so that a seed gives the same image on every device.
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            scheduler = choice.scheduler
            task = request.image_task
            if task is None:
                start = ImageStart(
                    initial_latents(
                        scheduler,
                        request.steps,
                        (
                            1,
                            pipeline.unet.config.in_channels,
                            height // pipeline.vae_scale_factor,
                            width // pipeline.vae_scale_factor,
                        ),
                        generator=generator,
                        device=self._device,
                        dtype=conditioning.positive.tokens.dtype,
                    ),
                    0,
                    None,
                )
            else:
                start = prepare_image_start(
                    pipeline,
                    scheduler,
                    task,
                    request.steps,
                    (width, height),
                    seed=request.seed,
                    generator=generator,
                    dtype=conditioning.positive.tokens.dtype,
                )
            # An SDXL inpainting model renders instead of the base UNet (inpaint_model.py).
            inpainting = self._inpaint_models.start(
                pipeline,
                request,
                (width, height),
                device=self._device,
                dtype=conditioning.positive.tokens.dtype,
            )
            unet_owner = pipeline if inpainting is None else inpainting.pipeline
            image_prompts = build_unet_extras(
                self._image_prompts,
                unet_owner,
                request,
                conditioning,
                scheduler,
                size=(width, height),
                device=self._device,
                dtype=conditioning.positive.tokens.dtype,
            )
            with attached(inpainting):
                latents = denoise(
                    self._components.noise_predictor(
                        unet_owner,
                        request,
                        scheduler,
                        conditioning,
                        size=(width, height),
                        start_index=start.start_index,
                        extras=image_prompts.extras,
                    ),
                    scheduler,
                    start.latents,
                    conditioning,
                    settings,
                    generator=generator,
                    progress=progress,
                    should_stop=should_stop,
                    start_index=start.start_index,
                    # An inpainting UNet sees the known region in its input: nothing to re-impose.
                    blend=start.blend if inpainting is None else None,
                )
            self._synchronize()
            timings["denoise"] = time.perf_counter() - mark

            mark = time.perf_counter()
            with (
                vae_tiling(pipeline.vae, task is not None and task.tiled_vae),
                self._accelerator.decode_context(pipeline.vae),
            ):
                image = _decode(pipeline, latents)
            if task is not None and image.size != (request.width, request.height):
                image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
            timings["decode"] = time.perf_counter() - mark
        timings["total"] = time.perf_counter() - started + timings.get("load", 0.0)
        result = self._result(request, image, choice, timings)
        result.extra.update(_refinements_record(request, settings, positive_workloads, negative_workloads))
        result.extra.update(self._components.record(request))
        result.extra.update(image_prompts.record)
        if inpainting is not None:
            result.extra.update(inpainting.record)
        result.extra.update(model_family="sdxl", embeddings=self._embeddings.record())
        return result

    def _encode(
        self,
        pipeline: StableDiffusionXLPipeline,
        request: GenerationRequest,
        positive_workloads: tuple[str, ...],
        negative_workloads: tuple[str, ...] | None,
    ) -> Conditioning:
        """Text embeddings per workload plus the ADM ids; ``negative_workloads`` None skips the negative.

        ``embedding:name`` references are rewritten to their loaded tokens here (``embeddings.py``).
        """
        self._embeddings.start_image()
        positive = encode_workloads(
            pipeline,
            self._embeddings.rewrite(pipeline, positive_workloads),
            clip_skip=request.clip_skip,
            device=self._device,
        )
        negative = None
        if negative_workloads is not None:
            negative = encode_workloads(
                pipeline,
                self._embeddings.rewrite(pipeline, negative_workloads),
                clip_skip=request.clip_skip,
                device=self._device,
            )
        width, height = self._render_size(request)
        time_ids = adm_time_ids(
            height,
            width,
            positive_scale=request.adm_scaler_positive,
            negative_scale=request.adm_scaler_negative,
            dtype=positive.tokens.dtype,
            device=self._device,
        )
        return Conditioning(positive=positive, negative=negative, time_ids=time_ids)

    def _thread_policy(self) -> contextlib.AbstractContextManager[None]:
        # tiny-random's tensors are far too small to split across threads: on a busy CPU, torch's
        # worker threads wait on each other at every op and a 1-second job takes a minute.
        if self._location.is_tiny and self._device.type == "cpu":
            return _single_cpu_thread()
        return contextlib.nullcontext()

    def _render_size(self, request: GenerationRequest) -> tuple[int, int]:
        if self._location.is_tiny:
            return tiny_render_size(request.width, request.height)
        return request.width, request.height

    def _synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _result(
        self,
        request: GenerationRequest,
        image: Image.Image,
        choice: SchedulerChoice,
        timings: dict[str, float],
    ) -> GeneratedImage:
        return GeneratedImage(
            image=image,
            width=image.width,
            height=image.height,
            model_name=self._location.name,
            model_path=str(self._location.path or ""),
            model_sha256=self._sha256,
            device=str(self._device),
            dtype=_dtype_name(self._dtype),
            timings={key: round(value, 4) for key, value in timings.items()},
            extra={
                "scheduler_class": choice.class_name,
                "sampler": choice.sampler,
                "scheduler": choice.schedule,
                "requested_size": [request.width, request.height],
                "reduced_size": self._location.is_tiny,
                "extra_prompts_mode": "separate",
            },
        )


# -- helpers -----------------------------------------------------------------------------------


def pick_device(setting: str) -> torch.device:
    """``engine.device`` → a torch device. ``auto``: cuda, else mps, else cpu."""
    value = setting.strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ConfigError(
            f"engine.device = {setting!r} is not a device name",
            where="engine.device",
            hint="use auto, cpu, cuda, cuda:N or mps",
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"engine.device = {setting!r} but this torch build sees no CUDA GPU",
            where="engine.device",
            hint="check the NVIDIA driver (nvidia-smi) and that torch has CUDA support, or use auto/cpu",
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"engine.device = {setting!r} but only {torch.cuda.device_count()} CUDA device(s) exist",
            where="engine.device",
            hint="use cuda:0 .. cuda:N-1, or auto",
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"engine.device = {setting!r} but Apple MPS is not available here",
            where="engine.device",
            hint="use auto or cpu",
        )
    if device.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(
            f"engine.device = {setting!r} is not supported",
            where="engine.device",
            hint="use auto, cpu, cuda or mps",
        )
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``engine.dtype`` → a torch dtype.

    ``auto``: bf16 on Ampere or newer CUDA, fp16 on older CUDA and on MPS, fp32 on CPU.
    """
    if setting != "auto":
        if setting not in _DTYPES:
            raise ConfigError(
                f"engine.dtype = {setting!r} is not supported",
                where="engine.dtype",
                hint=f"use auto or one of {', '.join(_DTYPES)}",
            )
        return _DTYPES[setting]
    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Force the Hugging Face hub offline (no downloads, no telemetry) while loading.

    huggingface_hub and diffusers read these switches once, at import time, so the module-level
    copies are patched along with the environment.
    """
    import diffusers.utils.hub_utils as diffusers_hub
    import huggingface_hub.constants as hub_constants

    patched = [
        (hub_constants, "HF_HUB_OFFLINE", True),
        (hub_constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (diffusers_hub, "HF_HUB_OFFLINE", True),
        (diffusers_hub, "HF_HUB_DISABLE_TELEMETRY", True),
    ]
    saved_env = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    saved_attrs = [
        (module, name, getattr(module, name)) for module, name, _ in patched if hasattr(module, name)
    ]
    os.environ.update(_OFFLINE_ENV)
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved_attrs:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _single_cpu_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars or cast warnings from diffusers while loading: a daemon's log is not a terminal."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    bars_were_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            diffusers_logging.enable_progress_bar()


@contextlib.contextmanager
def _load_errors(path: Path) -> Iterator[None]:
    """Turn loader exceptions into a ModelNotFound that names the file and what to do."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, ConfigError):
        raise
    except FileNotFoundError as exc:
        raise ModelNotFound(f"cannot read {path}: {exc}", where=str(path), hint="check the path") from exc
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
        raise ModelNotFound(
            f"could not load {path.name} as an SDXL model: {type(exc).__name__}: {exc}",
            where=str(path),
            hint="make sure it is a complete SDXL base checkpoint (.safetensors) or diffusers folder; "
            "a partial download is the usual cause, so download it again",
        ) from exc


def _default_scheduler(config_dir: Path) -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)


def _decode(pipeline: StableDiffusionXLPipeline, latents: torch.Tensor) -> Image.Image:
    vae = pipeline.vae
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = latents * std_t / vae.config.scaling_factor + mean_t
    else:
        latents = latents / vae.config.scaling_factor
    pixels = vae.decode(latents, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels, output_type="pil")[0]


def _refinements_record(
    request: GenerationRequest,
    settings: GuidanceSettings,
    positive_workloads: tuple[str, ...],
    negative_workloads: tuple[str, ...],
) -> dict[str, Any]:
    """What the loop applied, for the outbox's metadata."""
    return {
        "sharpness": request.sharpness,
        "sharpness_applied": settings.uses_cfg and request.sharpness > 0.0,
        "adaptive_cfg": request.adaptive_cfg,
        "adaptive_cfg_applied": settings.uses_cfg and request.cfg > request.adaptive_cfg,
        "adm_scaler_positive": request.adm_scaler_positive,
        "adm_scaler_negative": request.adm_scaler_negative,
        "adm_scaler_end": request.adm_scaler_end,
        "clip_skip": request.clip_skip,
        "positive_workloads": len(positive_workloads),
        "negative_workloads": len(negative_workloads) if settings.uses_cfg else 0,
        "full_prompt": list(positive_workloads),
        "full_negative_prompt": list(negative_workloads),
    }


def _validate(request: GenerationRequest) -> None:
    for label, side in (("width", request.width), ("height", request.height)):
        if not (_MIN_SIDE <= side <= _MAX_SIDE) or side % _SIDE_MULTIPLE:
            raise InvalidInput(
                f"{label} {side} is not usable",
                where=label,
                hint=f"use a multiple of {_SIDE_MULTIPLE} between {_MIN_SIDE} and {_MAX_SIDE}, e.g. 1152*896",
            )
    if not 1 <= request.steps <= _MAX_STEPS:
        raise InvalidInput(
            f"steps {request.steps} is out of range", where="steps", hint=f"use 1 to {_MAX_STEPS}"
        )
    if request.cfg < 1.0:
        raise InvalidInput(
            f"cfg {request.cfg} is below 1.0", where="cfg", hint="use 1.0 to 30 (Fooocus default 4.0)"
        )


def _out_of_memory(request: GenerationRequest, exc: BaseException) -> OutOfMemory:
    return OutOfMemory(
        f"the accelerator ran out of memory rendering {request.width}x{request.height}: {exc}",
        hint="the job is retried after freeing memory; if it keeps failing, close other GPU programs, "
        "use a smaller size, or set engine.dtype = 'float16'",
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


__all__ = ["TINY_MODEL", "SDXLEngine", "offline_hub", "pick_device", "pick_dtype"]
