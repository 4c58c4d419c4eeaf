"""Batched generation: several queued images in one UNet batch, each exactly as if rendered alone.

The worker asks three questions, answered by the engine when it can batch and by a safe fallback
when it cannot (a test fake, an engine without the methods):

- ``batch_limit(engine)``: how many images one batch may hold (``engine.batch_size``).
- ``batch_key(engine, request)``: requests with equal non-None keys may share a batch.
- ``generate_batch(engine, requests)``: one ``GeneratedImage`` per request, in order.

What a key holds (``BatchKey``): everything the shared denoising run depends on — model family and
model, render size, steps, sampler, scheduler, CFG, sharpness, adaptive CFG, ADM scalers, CLIP skip,
LoRAs with weights, VAE — plus the *sequence class* below. Prompts, negatives, workloads, styles and
seeds may differ: each image encodes its own prompts, starts from its own seed's noise and draws its
per-step noise from its own generator. A refiner switch batches too (its aesthetic-score ids are
repeated per image). Image actions (vary, upscale, inpaint) and image prompts (ControlNet,
IP-Adapter) render alone (key None): their per-image inputs are built for one image.

Sequence class. Each image's prompt takes some 77-token blocks per side; a batch tiles every side
to the least common multiple of all of them (exact: see ``conditioning.match_sequence_lengths``),
which could grow far beyond what any image needs on its own (3 and 4 blocks → 12). The class keeps
that bounded: block counts whose LCM is 1, 2 or 4 share class 0 (a batch of them is at most
4 × 77 = 308 tokens, which is also the longest any of them would be alone), any other LCM L is
its own class L (a batch of them stays at L). So batching never makes an image attend over more
tokens than the longest image in its batch would alone. The count uses the shipped CLIP tokenizer on the
prompts as written (``embedding:name`` counted as text): it bounds the cost only, the tiling itself
is always exact.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fooocusd.engine.base import GeneratedImage, GenerationRequest, ProgressCallback, StopCheck
from fooocusd.engine.clip_tokens import clip_chunks
from fooocusd.engine.conditioning import prompt_workloads

MAX_BATCH_SIZE = 16
AUTO_BATCH_SIZE_ON_GPU = 4
AUTO_BATCH_BY_MEMORY = ((22 * 2**30, 4), (15 * 2**30, 2))
"""``auto`` by the GPU's total memory: one 1024² SDXL image peaks near 9 GiB with about 7 GiB of it
resident weights, and each further image in the batch adds about 2 GiB of activations (CFG rows
included), so 4 fit from 22 GiB (24 GB cards and up) and 2 from 15 GiB (16 GB cards)."""
"""``batch_size = "auto"`` on a CUDA GPU in high-VRAM mode; 1 everywhere else."""
SHARED_SEQUENCE_CLASS = 0
"""Images whose own block LCM is 1, 2 or 4: any batch of them is at most 4 × 77 tokens long."""
_POWER_OF_TWO_BLOCKS = frozenset({1, 2, 4})


# -- the worker's three questions ------------------------------------------------------------------


def batch_limit(engine: object) -> int:
    """How many images ``engine`` may render in one UNet batch; 1 when it cannot batch (e.g. a test fake)."""
    method = getattr(engine, "batch_limit", None)
    if not callable(method):
        return 1
    return max(1, min(MAX_BATCH_SIZE, int(method())))


def batch_key(engine: object, request: GenerationRequest) -> Hashable | None:
    """Requests with equal non-None keys may share one batch; None = render alone.

    None for image actions, image prompts, SD 1.x/2.x models, and engines that cannot batch.
    """
    method = getattr(engine, "batch_key", None)
    if not callable(method):
        return None
    key: Hashable | None = method(request)
    return key


def generate_batch(
    engine: Any,
    requests: Sequence[GenerationRequest],
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    defer_decode: bool = False,
) -> list[GeneratedImage]:
    """One GeneratedImage per request, in order.

    Engines without a native ``generate_batch`` method get a loop of ``generate``. ``defer_decode``:
    an engine that ``defers_decode`` may hand images back with their decode still to run
    (``GeneratedImage.finished()``, ``decode_lane.py``).
    """
    method = getattr(engine, "generate_batch", None)
    if callable(method):
        deferral = {"defer_decode": True} if defer_decode and defers_decode(engine) else {}
        results: list[GeneratedImage] = method(
            list(requests), progress=progress, should_stop=should_stop, **deferral
        )
        return results
    return [engine.generate(request, progress, should_stop) for request in requests]


def generate_one(
    engine: Any,
    request: GenerationRequest,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    defer_decode: bool = False,
) -> GeneratedImage:
    """``engine.generate(request)``, or with ``defer_decode`` where the engine ``defers_decode``."""
    if defer_decode and defers_decode(engine):
        return generate_batch(engine, [request], progress, should_stop, defer_decode=True)[0]
    image: GeneratedImage = engine.generate(request, progress, should_stop)
    return image


def defers_decode(engine: object) -> bool:
    """Whether ``engine`` can hand text-to-image results back before their decode has run."""
    return bool(getattr(engine, "defers_decode", False))


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to render in one batch, as (field name, value) pairs in a fixed order."""

    fields: tuple[tuple[str, Hashable], ...]

    def differing_field(self, other: BatchKey) -> str | None:
        """The first field whose value differs from ``other``'s, or None when the keys are equal."""
        for (name, mine), (_, theirs) in zip(self.fields, other.fields, strict=True):
            if mine != theirs:
                return name
        return None


def render_alone_reason(request: GenerationRequest) -> str | None:
    """Why ``request`` cannot share a batch, or None when it can."""
    if request.image_task is not None:
        return f"it is an image action ({request.image_task.kind})"
    if request.image_prompts:
        return "it has image prompts"
    return None


def request_batch_key(
    request: GenerationRequest,
    *,
    family: str,
    model: Hashable,
    render_size: tuple[int, int],
    sequence_class: int,
) -> BatchKey | None:
    """The key of ``request`` for a ``family`` engine that resolves it to ``model``; None: render alone."""
    if render_alone_reason(request) is not None:
        return None
    return BatchKey(
        (
            ("model family", family),
            ("model", model),
            ("render size", render_size),
            ("steps", request.steps),
            ("sampler", request.sampler.strip().lower()),
            ("scheduler", request.scheduler.strip().lower()),
            ("cfg", request.cfg),
            ("sharpness", request.sharpness),
            ("adaptive_cfg", request.adaptive_cfg),
            ("adm_scaler_positive", request.adm_scaler_positive),
            ("adm_scaler_negative", request.adm_scaler_negative),
            ("adm_scaler_end", request.adm_scaler_end),
            ("clip_skip", request.clip_skip),
            ("loras", request.loras),
            ("vae", request.vae.strip()),
            ("prompt length class", sequence_class),
        )
    )


def require_shared_key(requests: Sequence[GenerationRequest], keys: Sequence[BatchKey | None]) -> None:
    """Raise ``ValueError`` naming the reason when ``requests`` (2 or more) may not share one batch."""
    if len(requests) < 2:
        return
    for position, (request, key) in enumerate(zip(requests, keys, strict=True), start=1):
        if key is None:
            reason = render_alone_reason(request) or "its model renders one image at a time"
            raise ValueError(f"request {position} of {len(requests)} must render alone: {reason}")
    first = keys[0]
    assert first is not None
    for position, key in enumerate(keys[1:], start=2):
        assert key is not None
        field = first.differing_field(key)
        if field is not None:
            raise ValueError(
                f"requests 1 and {position} cannot share a batch: their {field} differs "
                "(use batch_key to group requests)"
            )


# -- prompt length classes -----------------------------------------------------------------------


def sequence_class(block_counts: Iterable[int]) -> int:
    """The prompt length class of one image from its sides' 77-token block counts (module docstring)."""
    common = math.lcm(*block_counts)
    return SHARED_SEQUENCE_CLASS if common in _POWER_OF_TWO_BLOCKS else common


def prompt_block_counts(request: GenerationRequest, *, with_negative: bool) -> list[int]:
    """77-token blocks of the positive side (and of the negative side when CFG uses it)."""
    positive, negative = prompt_workloads(request)
    counts = [_blocks(positive)]
    if with_negative:
        counts.append(_blocks(negative))
    return counts


def _blocks(workloads: Sequence[str]) -> int:
    return sum(clip_chunks(text) for text in workloads)


# -- sizes -----------------------------------------------------------------------------------------


def resolve_batch_size(
    setting: str | int, *, device: torch.device, vram: str, total_memory: int | None = None
) -> int:
    """``engine.batch_size`` → images per batch: low-VRAM mode 1; ``auto`` on CUDA by the card's memory
    (``AUTO_BATCH_BY_MEMORY``; 4 when the memory is not known), else 1."""
    if vram == "low":
        return 1
    if setting == "auto":
        if device.type != "cuda":
            return 1
        if total_memory is None:
            return AUTO_BATCH_SIZE_ON_GPU
        return next((size for floor, size in AUTO_BATCH_BY_MEMORY if total_memory >= floor), 1)
    size = int(setting)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 'auto' or 1 to {MAX_BATCH_SIZE}, got {setting!r}")
    return size
