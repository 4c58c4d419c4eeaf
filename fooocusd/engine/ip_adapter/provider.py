"""IP-Adapter image prompts as a ``UNetExtras`` provider for the denoising loop.

How images are mixed follows the IP-Adapter paper as diffusers implements it (decoupled cross-attention:
``attention(text) + scale · attention(image tokens)`` in every cross-attention layer), **not**
Fooocus's own image-prompt formula. Per image prompt:

- The image (for ``face``: the aligned face crop) is encoded once with CLIP ViT-H/14; the "plus"
  adapter's resampler takes the penultimate hidden states. The unconditional (negative) side is the
  encoding of an all-zero pixel tensor, as in diffusers. The batch follows the loop's: negative first,
  then positive under CFG; positive alone at CFG 1.
- ``weight`` is the diffusers IP-Adapter ``scale`` of that image; ``stop_at`` ends it once the
  diffusion progress ``1 − t/999`` reaches it (the same progress measure as the loop's sharpness):
  from then on its scale is 0 and diffusers skips its attention (stop_at 1 never stops). ControlNet
  slots use the same rule.
- One adapter is loaded per kind (image_prompt → plus, face → plus-face). An adapter used by one
  image gets a plain scale. One used by several images gets a scale *per image* through diffusers'
  per-image path (``ip_adapter_masks`` with an all-ones mask): each image is attended on its own and
  added with its own weight, exactly as several single-image adapters would be.
- A prompt with weight 0 or stop_at 0 changes nothing and loads nothing; a job with no active IP
  prompt runs the plain UNet (the processors are swapped back; the adapters stay cached).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fooocusd.engine.base import GenerationRequest, ImagePrompt
from fooocusd.engine.denoise import UNetCall, UNetExtras
from fooocusd.engine.guidance import diffusion_progress
from fooocusd.engine.ip_adapter.encoder import ImageEncoder, load_image_encoder
from fooocusd.engine.ip_adapter.face_detect import FaceCrop, FaceDetector, YuNetDetector, crop_face
from fooocusd.engine.ip_adapter.files import (
    ADAPTER_FILES,
    IP_ADAPTER_KINDS,
    Located,
    adapter_file,
    encoder_location,
    face_detector_file,
)
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import file_sha256, folder_sha256
from fooocusd.errors import InvalidInput

METHOD = "IP-Adapter (diffusers decoupled cross-attention)"
_EMBEDDING_CACHE_SIZE = 16
_KIND_ORDER = tuple(ADAPTER_FILES)


def is_active(prompt: ImagePrompt) -> bool:
    """An IP-Adapter prompt that can change the image (weight and stop_at above 0)."""
    return prompt.kind in IP_ADAPTER_KINDS and prompt.weight > 0.0 and prompt.stop_at > 0.0


@dataclass(frozen=True)
class _AdapterGroup:
    """The images that share one adapter: their schedule and their batched embeddings."""

    schedule: tuple[tuple[float, float], ...]
    """(weight, stop_at) per image."""
    positive: torch.Tensor
    """1 × images × tokens × width."""
    negative: torch.Tensor

    def scales(self, progress: float) -> float | list[float]:
        values = [
            float(weight) if progress < stop_at or stop_at >= 1.0 else 0.0
            for weight, stop_at in self.schedule
        ]
        return values[0] if len(values) == 1 else values

    def batch(self, size: int) -> torch.Tensor:
        if size == 1:
            return self.positive
        if size % 2:
            raise ValueError(f"cannot pair IP-Adapter embeddings with a UNet batch of {size}")
        half = size // 2
        return torch.cat([self.negative.expand(half, -1, -1, -1), self.positive.expand(half, -1, -1, -1)])


class _ImagePromptCalls:
    """The ``UNetExtras`` for one image: sets each adapter's scales, hands over the embeddings."""

    def __init__(self, pipeline: Any, processors: Sequence[Any], groups: Sequence[_AdapterGroup]) -> None:
        self._pipeline = pipeline
        self._processors = list(processors)
        self._groups = list(groups)
        self._timesteps: list[float] | None = None
        self._applied: list[float | list[float]] | None = None
        self._needs_masks = any(len(group.schedule) > 1 for group in groups)

    def __call__(self, call: UNetCall) -> dict[str, Any]:
        progress = self._progress(call.index)
        scales = [group.scales(progress) for group in self._groups]
        if scales != self._applied:
            for processor in self._processors:
                processor.scale = [value if isinstance(value, float) else list(value) for value in scales]
            self._applied = scales
        size = call.model_input.shape[0]
        extras: dict[str, Any] = {
            "added_cond_kwargs": {"image_embeds": [group.batch(size) for group in self._groups]}
        }
        if self._needs_masks:
            extras["cross_attention_kwargs"] = {"ip_adapter_masks": self._masks(call.model_input)}
        return extras

    def _progress(self, index: int) -> float:
        if self._timesteps is None:  # one device→host copy per image, on its first call
            self._timesteps = [float(t) for t in self._pipeline.scheduler.timesteps.tolist()]
        if index >= len(self._timesteps):
            return 1.0
        return diffusion_progress(self._timesteps[index])

    def _masks(self, model_input: torch.Tensor) -> list[torch.Tensor | None]:
        height, width = model_input.shape[-2:]
        return [
            None
            if len(group.schedule) == 1
            else torch.ones(
                (1, len(group.schedule), height, width), device=model_input.device, dtype=model_input.dtype
            )
            for group in self._groups
        ]


class IPAdapterRuntime:
    """What stays loaded between jobs: the encoder, the face detector, the adapters, recent embeddings."""

    def __init__(self) -> None:
        from fooocusd.engine.ip_adapter.installer import AdapterInstaller

        self.installer = AdapterInstaller()
        self._encoder: ImageEncoder | None = None
        self._encoder_key: tuple[Path, str, torch.dtype] | None = None
        self._negative: torch.Tensor | None = None
        self._detector: FaceDetector | None = None
        self._detector_path: Path | None = None
        self._embeddings: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._faces: OrderedDict[str, FaceCrop] = OrderedDict()

    def extras(
        self,
        pipeline: Any,
        request: GenerationRequest,
        *,
        device: torch.device,
        dtype: torch.dtype,
        model_dirs: ModelDirs | None,
        detector: FaceDetector | None = None,
    ) -> list[UNetExtras]:
        active = [prompt for prompt in request.image_prompts if is_active(prompt)]
        if not active:
            self.installer.restore(pipeline)
            return []
        if model_dirs is None:
            raise ValueError("IP-Adapter image prompts need model_dirs (the engine's ModelDirs)")
        kinds = [kind for kind in _KIND_ORDER if any(prompt.kind == kind for prompt in active)]
        files = tuple(adapter_file(kind, model_dirs).path for kind in kinds)  # missing files fail first
        encoder = self._encoder_for(model_dirs, device, dtype)
        if "face" in kinds and detector is None:
            detector = self._detector_for(model_dirs)
        unet_dtype = pipeline.unet.dtype
        groups: list[_AdapterGroup] = []
        for kind in kinds:
            mine = [prompt for prompt in active if prompt.kind == kind]
            embeddings = [self._embedding(prompt, encoder, detector) for prompt in mine]
            positive = torch.stack([item[0] for item in embeddings]).unsqueeze(0).to(unet_dtype)
            negative = self._negative_for(encoder).expand_as(positive).to(unet_dtype)
            groups.append(
                _AdapterGroup(tuple((prompt.weight, prompt.stop_at) for prompt in mine), positive, negative)
            )
        processors = self.installer.install(pipeline, files)
        return [_ImagePromptCalls(pipeline, processors, groups)]

    def records(
        self, request: GenerationRequest, *, model_dirs: ModelDirs, hash_cache: Path | None
    ) -> list[dict[str, Any]]:
        """One metadata entry per IP-Adapter image prompt, in the job's order."""
        return [
            {
                "type": prompt.kind,
                "source": prompt.source,
                "weight": prompt.weight,
                "stop_at": prompt.stop_at,
                **self.record(prompt, model_dirs=model_dirs, hash_cache=hash_cache),
            }
            for prompt in request.image_prompts
            if prompt.kind in IP_ADAPTER_KINDS
        ]

    def record(
        self, prompt: ImagePrompt, *, model_dirs: ModelDirs, hash_cache: Path | None
    ) -> dict[str, Any]:
        """The IP-Adapter facts of one image prompt (adapter and encoder files with hashes, face found)."""
        entry: dict[str, Any] = {
            "applied": is_active(prompt),
            "method": METHOD,
            "adapter": ADAPTER_FILES[prompt.kind],
            "adapter_sha256": _hash_or_blank(lambda: adapter_file(prompt.kind, model_dirs), hash_cache),
            "encoder": self._encoder.location.name if self._encoder is not None else "",
            "encoder_sha256": _hash_or_blank(lambda: encoder_location(model_dirs), hash_cache),
        }
        face = self._faces.get(_digest(prompt.image)) if prompt.kind == "face" else None
        if face is not None:
            entry.update(face.record())
        return entry

    def release(self, pipeline: Any) -> None:
        self.installer.restore(pipeline)

    # -- cached pieces ---------------------------------------------------------------------------

    def _encoder_for(self, model_dirs: ModelDirs, device: torch.device, dtype: torch.dtype) -> ImageEncoder:
        location = encoder_location(model_dirs)
        key = (location.path, str(device), dtype)
        if self._encoder is None or self._encoder_key != key:
            self._encoder = None
            self._negative = None
            self._embeddings.clear()
            self._encoder = load_image_encoder(location, device=device, dtype=dtype)
            self._encoder_key = key
        return self._encoder

    def _negative_for(self, encoder: ImageEncoder) -> torch.Tensor:
        if self._negative is None:
            self._negative = encoder.embed_zero_image()[0]
        return self._negative

    def _detector_for(self, model_dirs: ModelDirs) -> FaceDetector:
        path = face_detector_file(model_dirs)
        if self._detector is None or self._detector_path != path:
            self._detector = YuNetDetector(path)
            self._detector_path = path
        return self._detector

    def _embedding(
        self, prompt: ImagePrompt, encoder: ImageEncoder, detector: FaceDetector | None
    ) -> torch.Tensor:
        digest = _digest(prompt.image)
        key = (prompt.kind, digest)
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached
        image = prompt.image
        if prompt.kind == "face":
            assert detector is not None
            crop = crop_face(image, detector, source=prompt.source)
            self._faces[digest] = crop
            while len(self._faces) > _EMBEDDING_CACHE_SIZE:
                self._faces.popitem(last=False)
            image = crop.image
        embedding = encoder.embed(image)
        self._embeddings[key] = embedding
        while len(self._embeddings) > _EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embedding


def _digest(image: Image.Image) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    hasher.update(image.tobytes())
    return hasher.hexdigest()


def _hash_or_blank(locate: Any, hash_cache: Path | None) -> str:
    if hash_cache is None:
        return ""
    try:
        located: Located = locate()
    except InvalidInput:
        return ""
    path = located.path
    return folder_sha256(path, hash_cache) if path.is_dir() else file_sha256(path, hash_cache)
