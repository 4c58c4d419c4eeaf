"""IP-Adapter image prompts (types ``image_prompt`` and ``face``) for the SDXL engine.

Entry points for the engine (called inside its inference block, best for *every* image; a UNet
call without image embeddings puts the plain UNet back by itself):

- ``unet_extras(pipeline, request, conditioning, device, dtype, *, model_dirs=...)`` → the
  ``UNetExtras`` for the denoising loop; ``[]`` (and the plain UNet restored) when the request has no
  active IP-Adapter image prompt.
- ``image_prompt_records(request, *, model_dirs, hash_cache)`` → the sidecar entries, or
  ``image_prompt_record(prompt, ...)`` → the IP-Adapter fields of one slot's entry.
- ``release(pipeline)`` → put the plain UNet back (e.g. before handing the pipeline to something else).

See ``provider.py`` for how weights and stop-at are applied (diffusers' IP-Adapter, not Fooocus's
formula) and ``files.py`` for which files go where.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fooocusd.engine.ip_adapter.files import ADAPTER_FILES, FACE_DETECTOR_FILE, IP_ADAPTER_KINDS

if TYPE_CHECKING:  # the provider pulls in torch and diffusers; face-crop users need neither
    import torch

    from fooocusd.engine.base import GenerationRequest, ImagePrompt
    from fooocusd.engine.denoise import UNetExtras
    from fooocusd.engine.ip_adapter.provider import IPAdapterRuntime
    from fooocusd.engine.model_dirs import ModelDirs

_RUNTIME: IPAdapterRuntime | None = None


def runtime() -> IPAdapterRuntime:
    """The process-wide cache (encoder, detector, adapters, embeddings); the engine is one per process."""
    global _RUNTIME
    if _RUNTIME is None:
        from fooocusd.engine.ip_adapter.provider import IPAdapterRuntime

        _RUNTIME = IPAdapterRuntime()
    return _RUNTIME


def unet_extras(
    pipeline: Any,
    request: GenerationRequest,
    conditioning: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    model_dirs: ModelDirs | None = None,
) -> list[UNetExtras]:
    """The IP-Adapter ``UNetExtras`` for ``request``. Raises ``InvalidInput`` for a missing file or no face.

    ``conditioning`` is not needed (the batch layout is read from each call). ``model_dirs`` is
    required as soon as the request has an active IP-Adapter image prompt.
    """
    del conditioning
    return runtime().extras(pipeline, request, device=device, dtype=dtype, model_dirs=model_dirs)


def image_prompt_records(
    request: GenerationRequest, *, model_dirs: ModelDirs, hash_cache: Path | None = None
) -> list[dict[str, Any]]:
    """Sidecar entries (type, source, weight, stop_at, adapter file + SHA-256, encoder ...) in job order."""
    return runtime().records(request, model_dirs=model_dirs, hash_cache=hash_cache)


def image_prompt_record(
    prompt: ImagePrompt, *, model_dirs: ModelDirs, hash_cache: Path | None = None
) -> dict[str, Any]:
    """The IP-Adapter fields to add to one slot's sidecar entry: applied, method, adapter,
    adapter_sha256, encoder, encoder_sha256, and for faces face_box and face_score."""
    return runtime().record(prompt, model_dirs=model_dirs, hash_cache=hash_cache)


def release(pipeline: Any) -> None:
    runtime().release(pipeline)


__all__ = [
    "ADAPTER_FILES",
    "FACE_DETECTOR_FILE",
    "IP_ADAPTER_KINDS",
    "image_prompt_record",
    "image_prompt_records",
    "release",
    "runtime",
    "unet_extras",
]
