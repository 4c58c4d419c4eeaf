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

Batches (``batching.py``): ``generate_batch`` renders several requests with one batch key in one
denoising run, each image with its own prompts, seed and per-step noise, and returns the same pixels
as ``generate`` would for each (within float rounding of the wider UNet batch). ``generate(r)`` is
``generate_batch([r])[0]``: both share one code path. The VAE decodes image by image: at SDXL sizes a
decode is compute-bound per image, so batching it saves little and would multiply its peak memory
(several GiB per 1024² image) by the batch size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from loguru import logger
from PIL import Image

from fooocusd.engine.acceleration import AccelerationOptions, Accelerator, resolve_vram
from fooocusd.engine.base import GeneratedImage, GenerationRequest, ProgressCallback, StopCheck
from fooocusd.engine.batching import (
    BatchKey,
    prompt_block_counts,
    render_alone_reason,
    request_batch_key,
    require_shared_key,
    resolve_batch_size,
    sequence_class,
)
from fooocusd.engine.conditioning import (
    Conditioning,
    PromptEmbeddings,
    adm_time_ids,
    encode_workloads,
    prompt_workloads,
    stack_conditionings,
)
from fooocusd.engine.controlnet.models import ControlNetConfig
from fooocusd.engine.decode import at_requested_size, decode_latents
from fooocusd.engine.decode_lane import DecodeLane, DeferredImage
from fooocusd.engine.denoise import GuidanceSettings, denoise
from fooocusd.engine.devices import (
    device_total_memory,
    dtype_name,
    free_device_memory,
    pick_device,
    pick_dtype,
    single_cpu_thread,
    synchronize,
)
from fooocusd.engine.embeddings import Embeddings
from fooocusd.engine.encoding_cache import EncodingCache
from fooocusd.engine.image_prompts import ImagePromptState, build_unet_extras
from fooocusd.engine.img2img import start_for, vae_tiling
from fooocusd.engine.inpaint_model import InpaintModelCache, attached
from fooocusd.engine.job_components import JobComponents
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import (
    SDXL_CONFIG_DIR,
    TINY_MODEL,
    ModelLocation,
    ModelRoots,
    job_model_errors,
    model_sha256,
    require_sdxl_checkpoint,
    resolve_model,
)
from fooocusd.engine.out_of_memory import out_of_memory_retryable
from fooocusd.engine.pipeline_loading import load_errors, offline_hub, quiet_loading
from fooocusd.engine.render_record import (
    guidance_record,
    model_facts,
    rendered_image,
    sdxl_adm_record,
)
from fooocusd.engine.request_checks import validate_request
from fooocusd.engine.samplers import SchedulerChoice, build_scheduler
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline, tiny_render_size
from fooocusd.errors import FooocusdError, Interrupted, OutOfMemory
from fooocusd.step_timer import StepTimer, expanded


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
        attention: str = "auto",
        acceleration: AccelerationOptions | None = None,
        config_dir: Path = SDXL_CONFIG_DIR,
        configured_model: str = "",
        allow_unsafe_pickle: bool = False,
        controlnet: ControlNetConfig | None = None,
        batch_size: str | int = "auto",
    ) -> None:
        self._allow_unsafe_pickle = allow_unsafe_pickle
        self._batch_size = batch_size
        self._batch_ceiling = 0  # > 0 after a batch ran out of memory: its half
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
        self._load_steps: dict[str, float] = {}
        """Seconds per step of the last model load (``describe()["load_steps_s"]``)."""
        self._components = JobComponents(models_dir, hash_cache, config_dir=config_dir)
        self._image_prompts = ImagePromptState(self._model_dirs, hash_cache, controlnet)
        self._embeddings = Embeddings(self._model_dirs, hash_cache, allow_unsafe_pickle=allow_unsafe_pickle)
        self.encodings = EncodingCache()
        """Workloads encoded for earlier images of the resident pipeline (negatives, style lines)."""
        self._inpaint_models = InpaintModelCache(
            self._model_dirs, hash_cache, config_dir=config_dir, allow_pickle=allow_unsafe_pickle
        )
        self._decode_lane = DecodeLane()
        self._accelerator.before_capture = self._decode_lane.drain  # a capture has the GPU to itself

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
        return self._render([request], progress, should_stop)[0]

    # -- batching (batching.py) ----------------------------------------------------------------

    def batch_limit(self) -> int:
        """Images per batch: ``engine.batch_size`` ("auto": by the GPU's memory in high-VRAM mode);
        low-VRAM: 1; never more than a batch that has run out of memory here, halved."""
        plan = self._accelerator.plan
        vram = plan.vram if plan is not None else resolve_vram(self._accelerator.options.vram, self._device)
        total = device_total_memory(self._device)
        size = resolve_batch_size(self._batch_size, device=self._device, vram=vram, total_memory=total)
        return min(size, self._batch_ceiling) if self._batch_ceiling else size

    @property
    def defers_decode(self) -> bool:
        """Whether ``generate_batch(..., defer_decode=True)`` may leave decodes to the caller's thread."""
        plan = self._accelerator.plan
        return plan is not None and plan.overlap_decode

    def batch_key(self, request: GenerationRequest) -> BatchKey | None:
        """Equal keys may share a batch; None: render alone (image actions, image prompts, refiner)."""
        if render_alone_reason(request) is not None:
            return None
        try:
            target = self._target_location(request.model)
        except FooocusdError:
            return None  # generate reports the unusable model for this request alone
        return self._key_for(request, target, family="sdxl")

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        *,
        defer_decode: bool = False,
    ) -> list[GeneratedImage]:
        """One image per request, in order, from one denoising run. ``ValueError`` when the requests'
        batch keys differ (naming the field); ``OutOfMemory`` as ``generate`` (retry them singly).

        ``defer_decode``: where ``overlap_decode`` is on, text-to-image results come back with their
        decode still to run (``GeneratedImage.finished()``, ``decode_lane.py``)."""
        requests = list(requests)
        if len(requests) > 1:
            require_shared_key(requests, [self.batch_key(request) for request in requests])
        return self._render_batch(requests, progress, should_stop, defer_decode) if requests else []

    def _render_batch(
        self,
        requests: list[GenerationRequest],
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        defer_decode: bool = False,
    ) -> list[GeneratedImage]:
        """``_render``, and a batch that runs out of memory halves the batches that follow."""
        try:
            return self._render(requests, progress, should_stop, defer_decode)
        except OutOfMemory:
            if len(requests) > 1:
                self._batch_ceiling = len(requests) // 2
                logger.warning(
                    "a batch of {} images ran out of GPU memory: batches of at most {} from now on",
                    len(requests),
                    self._batch_ceiling,
                )
            raise

    def _key_for(self, request: GenerationRequest, target: ModelLocation, *, family: str) -> BatchKey | None:
        block_counts = prompt_block_counts(request, with_negative=request.cfg > 1.0)
        return request_batch_key(
            request,
            family=family,
            model=target,
            render_size=_render_size_on(target, request),
            sequence_class=sequence_class(block_counts),
        )

    @property
    def is_loaded(self) -> bool:
        """A model is resident (``load``, or a job, loads one; ``unload`` drops it)."""
        return self._pipeline is not None

    def unload(self) -> None:
        """Drop the resident pipeline and its add-ons (LoRAs, VAE, refiner, embeddings, ControlNets)."""
        self._decode_lane.drain()
        self._pipeline = None
        self._accelerator.drop_graphs()
        self._components = JobComponents(self._models_dir, self._hash_cache, config_dir=self._config_dir)
        self._image_prompts = ImagePromptState(self._model_dirs, self._hash_cache, self._image_prompts.config)
        self._embeddings.attach(None)
        self.encodings.attach(None)
        self._inpaint_models.clear()
        self.free_memory()

    def warm_up(
        self, request_for: Callable[[], GenerationRequest | None], should_stop: StopCheck | None = None
    ) -> float | None:
        """One discarded render when the first image would otherwise compile the UNet or capture its
        CUDA graphs (for the request's size, batch of one), so that the daemon is ready when it says so."""
        plan = self._accelerator.plan
        if self._pipeline is None or plan is None or (plan.compile == "off" and not plan.cuda_graphs):
            return None
        request = request_for()
        if request is None:
            return None
        mark = time.perf_counter()
        self.generate(request, should_stop=should_stop)
        return time.perf_counter() - mark

    def free_memory(self) -> None:
        self.encodings.clear()  # after running out of memory, every megabyte counts
        free_device_memory(self._device)

    def _attention_in_use(self) -> str:
        choice = self._accelerator.attention_choice
        return choice.backend if choice is not None else self._attention

    def describe(self) -> dict[str, Any]:
        return {
            **model_facts(self._location, self._sha256),
            "loaded": self._pipeline is not None,
            "device": str(self._device),
            "dtype": dtype_name(self._dtype),
            "attention": self._attention_in_use(),
            "acceleration": self._accelerator.record(),
            "config_dir": str(self._config_dir),
            "reduced_size": self._location.is_tiny,
            "load_steps_s": {step: round(seconds, 3) for step, seconds in self._load_steps.items()},
        }

    # -- loading -------------------------------------------------------------------------------

    def _switch_model_for(self, requested: str) -> None:
        target = self._target_location(requested)
        if target == self._location and self._pipeline is not None:
            return
        self._decode_lane.drain()
        self._pipeline = None
        self._accelerator.drop_graphs()
        self.free_memory()
        self._location = target
        with job_model_errors(configured=target == self._default_location):
            self._load(target)

    def _target_location(self, requested: str) -> ModelLocation:
        name = requested.strip()
        if not name or name == self._configured_model:
            return self._default_location
        if name == self._location.name:
            return self._location
        with job_model_errors(configured=False):
            return resolve_model(
                name, self._model_dirs, allow_pickle=self._allow_unsafe_pickle, named_by="model"
            )

    def _load(self, location: ModelLocation) -> None:
        started = time.perf_counter()
        timer = StepTimer()
        if location.is_tiny:
            pipeline = build_tiny_sdxl_pipeline(_default_scheduler(self._config_dir))
        elif location.kind == "single_file":
            assert location.path is not None
            require_sdxl_checkpoint(location.path)
            pipeline = self._from_single_file(location.path)
        else:
            assert location.path is not None
            pipeline = self._from_folder(location.path)
        timer.reached("checkpoint read")
        self._prepare(pipeline)
        timer.reached("acceleration")
        self._sha256 = model_sha256(location, self._hash_cache)
        timer.reached("hashed")
        self._base_scheduler_config = dict(pipeline.scheduler.config)
        self._pipeline = pipeline
        plan = self._accelerator.plan
        self._components.attach(pipeline, fold_loras=plan is None or plan.folds_loras)
        self._embeddings.attach(pipeline)
        self.encodings.attach(pipeline)
        timer.reached("components attached")
        self._load_steps = expanded(timer.steps, "acceleration", self._accelerator.load_steps)
        self._unreported_load_seconds = time.perf_counter() - started

    def _from_single_file(self, path: Path) -> StableDiffusionXLPipeline:
        with offline_hub(), quiet_loading(), load_errors(path):
            return StableDiffusionXLPipeline.from_single_file(
                str(path),
                config=str(self._config_dir),
                local_files_only=True,
                dtype=self._dtype,
                add_watermarker=False,
            )

    def _from_folder(self, path: Path) -> StableDiffusionXLPipeline:
        with offline_hub(), quiet_loading(), load_errors(path):
            return StableDiffusionXLPipeline.from_pretrained(
                str(path), local_files_only=True, dtype=self._dtype, add_watermarker=False
            )

    def _prepare(self, pipeline: StableDiffusionXLPipeline) -> None:
        # Attention, placement (vram), VAE precision, channels_last, fused QKV, compile: acceleration.py.
        self._accelerator.apply(pipeline)
        pipeline.set_progress_bar_config(disable=True)

    # -- generation ----------------------------------------------------------------------------

    def _render(
        self,
        requests: list[GenerationRequest],
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        defer_decode: bool = False,
    ) -> list[GeneratedImage]:
        """The one code path of ``generate`` and ``generate_batch``: ``requests`` share a batch key
        (checked by the caller) or are a single request of any kind."""
        for request in requests:
            validate_request(request)
        if should_stop is not None and should_stop():
            raise Interrupted("stopped before the first step because shutdown was requested")
        started = time.perf_counter()
        first = requests[0]
        defer = defer_decode and self._overlaps_decode(first)
        if not defer:
            self._decode_lane.drain()  # this render uses the VAE itself
        with out_of_memory_retryable(first, self.free_memory):
            self._switch_model_for(first.model)
            # LoRAs, VAE and refiner (shared by the batch); outside inference mode, as adapters are injected.
            self._components.prepare(
                self._pipeline, first, base=self._location, device=self._device, dtype=self._dtype
            )
            return self._generate(requests, progress, should_stop, started, defer)

    def _overlaps_decode(self, request: GenerationRequest) -> bool:
        """Whether this request's decode may run after the render, beside the next one: with
        ``overlap_decode`` on, for text to image (an image task encodes and tiles with the VAE)."""
        return self.defers_decode and request.image_task is None

    def _generate(
        self,
        requests: list[GenerationRequest],
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        started: float,
        defer: bool,
    ) -> list[GeneratedImage]:
        pipeline = self._pipeline
        assert pipeline is not None
        request = requests[0]  # what the batch shares: the key guarantees it is the same for all
        count = len(requests)
        choice = build_scheduler(request.sampler, request.scheduler, self._base_scheduler_config)
        pipeline.scheduler = choice.scheduler
        width, height = self._render_size(request)
        load_seconds = self._unreported_load_seconds
        self._unreported_load_seconds = None

        workloads = [prompt_workloads(each) for each in requests]
        settings = GuidanceSettings(
            cfg=request.cfg,
            sharpness=request.sharpness,
            adaptive_cfg=request.adaptive_cfg,
            adm_end=request.adm_scaler_end,
        )
        with torch.inference_mode(), self._thread_policy():
            encoded = [
                self._encode_timed(pipeline, each, *workloads[i], settings) for i, each in enumerate(requests)
            ]
            conditioning = stack_conditionings([each.conditioning for each in encoded])

            mark = time.perf_counter()
            # Seeded on the CPU so that a seed gives the same image on every device; one per image.
            generators = [torch.Generator(device="cpu").manual_seed(each.seed) for each in requests]
            scheduler = choice.scheduler
            task = request.image_task
            starts = [
                start_for(
                    pipeline,
                    scheduler,
                    each.image_task,
                    each.steps,
                    (width, height),
                    seed=each.seed,
                    generator=generator,
                    device=self._device,
                    dtype=conditioning.positive.tokens.dtype,
                )
                for each, generator in zip(requests, generators, strict=True)
            ]
            start = starts[0]  # image tasks (start part-way, blend) render alone
            latents = torch.cat([each.latents for each in starts]) if count > 1 else start.latents
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
                        graphs=self._accelerator.graphs,
                    ),
                    scheduler,
                    latents,
                    conditioning,
                    settings,
                    generator=generators[0] if count == 1 else generators,
                    progress=progress,
                    should_stop=should_stop,
                    start_index=start.start_index,
                    # An inpainting UNet sees the known region in its input: nothing to re-impose.
                    blend=start.blend if inpainting is None else None,
                )
            synchronize(self._device)
            denoise_seconds = time.perf_counter() - mark

            tiled = task is not None and task.tiled_vae
            decoded = [
                (self._defer_decode(pipeline, latents[i : i + 1], each), None)
                if defer
                else self._decode_timed(pipeline, latents[i : i + 1], each, tiled)
                for i, each in enumerate(requests)
            ]
        shared_seconds = (time.perf_counter() - started) / count
        results: list[GeneratedImage] = []
        for index, each in enumerate(requests):
            image, decode_seconds = decoded[index]
            timings = {
                **({"load": load_seconds} if index == 0 and load_seconds is not None else {}),
                "encode": encoded[index].seconds,
                "denoise": denoise_seconds / count,  # the shared run, split evenly
                **({"decode": decode_seconds} if decode_seconds is not None else {}),  # deferred: later
            }
            timings["total"] = shared_seconds + timings.get("load", 0.0)
            result = self._result(each, image, choice, timings)
            positive_workloads, negative_workloads = workloads[index]
            result.extra.update(
                guidance_record(
                    each, settings, positive_workloads, negative_workloads, adm=sdxl_adm_record(each)
                )
            )
            result.extra.update(self._components.record(each))
            result.extra.update(image_prompts.record)
            if inpainting is not None:
                result.extra.update(inpainting.record)
            result.extra.update(model_family="sdxl", embeddings=encoded[index].embeddings, batch_size=count)
            results.append(result)
        return results

    def _encode_timed(
        self,
        pipeline: StableDiffusionXLPipeline,
        request: GenerationRequest,
        positive_workloads: tuple[str, ...],
        negative_workloads: tuple[str, ...],
        settings: GuidanceSettings,
    ) -> _EncodedImage:
        """One image's conditioning, with the embeddings its prompts used and the seconds it took."""
        mark = time.perf_counter()
        negative = negative_workloads if settings.uses_cfg else None
        conditioning = self._encode(pipeline, request, positive_workloads, negative)
        return _EncodedImage(conditioning, self._embeddings.record(), time.perf_counter() - mark)

    def _decode_timed(
        self,
        pipeline: StableDiffusionXLPipeline,
        latents: torch.Tensor,
        request: GenerationRequest,
        tiled: bool,
    ) -> tuple[Image.Image, float]:
        """One image's latents → its picture at the request's size, and the seconds it took."""
        mark = time.perf_counter()
        with vae_tiling(pipeline.vae, tiled), self._accelerator.decode_context(pipeline.vae):
            image = decode_latents(pipeline.vae, pipeline.image_processor, latents, latent_statistics=True)
        return at_requested_size(image, request), time.perf_counter() - mark

    def _defer_decode(
        self, pipeline: StableDiffusionXLPipeline, latents: torch.Tensor, request: GenerationRequest
    ) -> DeferredImage:
        """One text-to-image result's decode, to run on whichever thread first needs the picture; it
        keeps this job's VAE even if the next job picks another."""
        vae, processor = pipeline.vae, pipeline.image_processor
        scale = pipeline.vae_scale_factor
        size = (latents.shape[-1] * scale, latents.shape[-2] * scale)

        def decode() -> Image.Image:
            with (
                torch.inference_mode(),
                self._thread_policy(),
                out_of_memory_retryable(request, self.free_memory),
            ):
                return decode_latents(vae, processor, latents, latent_statistics=True)

        return self._decode_lane.defer(decode, size)

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
        state = self._components.text_encoder_state

        def encode(workloads: tuple[str, ...]) -> PromptEmbeddings:
            return encode_workloads(
                pipeline,
                self._embeddings.rewrite(pipeline, workloads),
                clip_skip=request.clip_skip,
                device=self._device,
                cache=self.encodings,
                encoder_state=state,
                graphs=self._accelerator.encoder_graphs,
            )

        positive = encode(positive_workloads)
        negative = encode(negative_workloads) if negative_workloads is not None else None
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
            return single_cpu_thread()
        return contextlib.nullcontext()

    def _render_size(self, request: GenerationRequest) -> tuple[int, int]:
        return _render_size_on(self._location, request)

    def _result(
        self,
        request: GenerationRequest,
        image: Image.Image | DeferredImage,
        choice: SchedulerChoice,
        timings: dict[str, float],
    ) -> GeneratedImage:
        return rendered_image(
            request,
            image,
            choice,
            timings,
            location=self._location,
            sha256=self._sha256,
            device=self._device,
            dtype=self._dtype,
            reduced_size=self._location.is_tiny,
        )


# -- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncodedImage:
    conditioning: Conditioning
    embeddings: list[dict[str, str]]
    seconds: float


def _render_size_on(location: ModelLocation, request: GenerationRequest) -> tuple[int, int]:
    if location.is_tiny:
        return tiny_render_size(request.width, request.height)
    return request.width, request.height


def _default_scheduler(config_dir: Path) -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_pretrained(config_dir, subfolder="scheduler", local_files_only=True)


__all__ = ["TINY_MODEL", "SDXLEngine", "offline_hub", "pick_device", "pick_dtype"]
