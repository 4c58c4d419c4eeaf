"""The small interface between the worker and whatever renders images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from fooocusd.engine.decode_lane import DeferredImage

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(step_done, total_steps)`` after each denoising step."""

StopCheck = Callable[[], bool]
"""Returns True when the engine should abandon the current image as soon as it can."""


@dataclass(frozen=True, eq=False)
class ImageTask:
    """An image for the engine to start from. ``image`` is RGB at exactly the request's width × height.

    ``strength`` is the share of the noise schedule that is re-run (Fooocus's "denoise"): 1.0 starts
    from noise, 0.5 keeps the composition. With a ``mask`` ("L", same size, white = repaint) only
    the white area is generated; the rest is held to the image at every step. The engine returns
    the raw decoded result at the request's size; pasting it back is the caller's job.
    """

    kind: str  # "vary", "upscale" or "inpaint" (outpaint is inpaint on an extended canvas)
    image: Image.Image
    strength: float
    mask: Image.Image | None = None
    tiled_vae: bool = False
    """Encode and decode in tiles (large upscales), so any size fits in memory."""
    inpaint_model: str = ""
    """With a ``mask``: an SDXL inpainting checkpoint whose 9-channel UNet renders instead of the base
    model's (``fooocusd.engine.inpaint_model``); "" or "none": the base model (masked img2img)."""


@dataclass(frozen=True)
class ImagePrompt:
    """A decoded image prompt for the engine (see ``JobSpec.image_prompts``); weight/stop_at resolved."""

    kind: str
    """image_prompt, face, pyracanny, cpds or depth."""
    image: Image.Image
    weight: float
    stop_at: float
    source: str = ""
    """The inbox-relative file name, for metadata."""


@dataclass(frozen=True)
class GenerationRequest:
    """Concrete settings for exactly one image. Nothing here is optional."""

    prompt: str
    negative: str
    seed: int
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    model: str
    extra_prompts: tuple[str, ...] = ()
    sharpness: float = 2.0
    styles: tuple[str, ...] = ()
    performance: str = "speed"
    adaptive_cfg: float = 7.0
    adm_scaler_positive: float = 1.5
    adm_scaler_negative: float = 0.8
    adm_scaler_end: float = 0.3
    clip_skip: int = 2
    positive_workloads: tuple[str, ...] = ()
    negative_workloads: tuple[str, ...] = ()
    wildcards_in_order: bool = False
    loras: tuple[tuple[str, float], ...] = ()
    """(name, weight) pairs: the preset's, the performance mode's, the job's, then inline tags."""
    refiner: str = ""
    """Refiner checkpoint name; empty means none."""
    refiner_switch: float = 0.8
    """Fraction of the steps after which the refiner takes over."""
    vae: str = ""
    """VAE override name; empty means the checkpoint's own VAE."""
    image_prompts: tuple[ImagePrompt, ...] = ()
    """IP-Adapter and ControlNet inputs, in the job's order."""
    image_task: ImageTask | None = None
    """Start from an image instead of noise (vary, upscale, inpaint, outpaint); None: text to image."""


@dataclass
class GeneratedImage:
    """One image and the facts the outbox records about how it was made.

    ``image`` is a ``DeferredImage`` only where the caller asked the engine to defer the decode
    (``decode_lane.py``); ``finished()`` gives the picture either way.
    """

    image: Image.Image | DeferredImage
    width: int
    height: int
    model_name: str
    model_path: str
    model_sha256: str
    device: str
    dtype: str
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def finished(self) -> Image.Image:
        """The picture: a deferred decode runs now (on this thread, once), and its time is recorded."""
        if isinstance(self.image, DeferredImage):
            deferred = self.image
            self.image = deferred.result()
            self.timings["decode"] = round(deferred.seconds, 4)
            self.timings["total"] = round(self.timings.get("total", 0.0) + deferred.seconds, 4)
        return self.image


class Engine(Protocol):
    def load(self) -> None:
        """Load weights. Called once before the first job (``warm_up`` follows, when configured)."""

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GeneratedImage:
        """Render one image. Raises ``InvalidInput`` or ``TransientError``/``OutOfMemory``."""
        ...

    def warm_up(
        self, request_for: Callable[[], GenerationRequest | None], should_stop: StopCheck | None = None
    ) -> float | None:
        """Render ``request_for()`` once and drop it, where that spares the first job a wait
        (compiling); the seconds it took, or None when there was nothing to warm. ``request_for`` is
        called only then (making the request runs prompt expansion)."""

    def free_memory(self) -> None:
        """Release cached accelerator memory (called before retrying after an OOM)."""

    def describe(self) -> dict[str, Any]:
        """Model path, hash, device and dtype, for ``status`` and ``doctor``."""
        ...
