"""LoRAs on the resident SDXL pipeline: find the file, check it, load it once, weight it per job.

Each LoRA file becomes one peft adapter on the pipeline (``load_lora_weights``; diffusers converts
kohya files). Adapters stay loaded between jobs, keyed by the file's SHA-256 (through the engine's
hash cache, so an unchanged file is never re-read to hash it), with a least-recently-used bound;
a job only switches which adapters are active and at what weight (``set_adapters``), or turns
them all off (``disable_lora``). The base model is never reloaded for a LoRA change. Where
``fold`` is set (the engine's default outside fp8 and low-VRAM mode), the active UNet adapters are
then folded into the UNet's weights (``lora_merge.py``), so they cost nothing per step.

The same file named twice in one image (under two spellings, or once by a preset and once by the
job) is one adapter whose weight is the sum of both: that is exactly what stacking the same LoRA
twice computes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.families import PICKLE_SUFFIXES, SAFE_SUFFIX
from fooocusd.engine.fetch import fetch_suggestion
from fooocusd.engine.lora_merge import FoldedUNetLoras
from fooocusd.engine.model_dirs import ModelDirs, put_file_into, searched_folders
from fooocusd.engine.models import autov2, file_sha256
from fooocusd.engine.prompt_syntax import loras_from_tags, parse_inline_loras
from fooocusd.errors import InvalidInput, ModelNotFound

MAX_LORAS_PER_IMAGE = 8
"""LoRA files per image: up to 5 from the preset and job, inline tags, and the performance LoRA."""
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -2.0, 2.0
ADAPTER_CACHE_SIZE = 12
"""Adapters kept loaded; must hold at least one image's worth (``MAX_LORAS_PER_IMAGE``)."""

LoraLayout = Literal["kohya", "diffusers"]

_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_DIFFUSERS_MARKERS = (
    "lora_A",
    "lora_B",
    ".lora.down",
    ".lora.up",
    "lora_linear_layer",
    ".lora_down",
    ".lora_up",
)
_LYCORIS_MARKERS = ("hada_", "lokr_", ".oft_", "glora_")
_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "conditioner.", "cond_stage_model.")


@dataclass(frozen=True)
class LoraFile:
    """A LoRA the engine found: the name the job used, the file and its hash."""

    name: str
    path: Path
    sha256: str

    @property
    def autov2(self) -> str:
        return autov2(self.sha256)


@dataclass(frozen=True)
class AppliedLora:
    """One active adapter for the current image, for the image's metadata."""

    file: LoraFile
    weight: float
    adapter: str

    def record(self) -> dict[str, Any]:
        return {
            "name": self.file.name,
            "weight": self.weight,
            "sha256": self.file.sha256,
            "hash": self.file.autov2,
        }


def text_encoder_state(applied: Sequence[AppliedLora]) -> tuple[tuple[str, float], ...]:
    """What the active LoRAs change in the text encoders' output: each file and its weight."""
    return tuple((item.file.sha256, item.weight) for item in applied)


def find_lora(model_dirs: ModelDirs, name: str) -> Path:
    """The ``.safetensors`` file for ``name`` in the LoRA folders (by path, or by stem in a subfolder)."""
    cleaned = name.strip()
    if not cleaned or ".." in Path(cleaned).parts:
        raise InvalidInput(
            f"LoRA name {name!r} is not usable",
            where="loras",
            hint="name a file in the loras folder, e.g. 'my_style' or 'styles/my_style.safetensors'",
        )
    if Path(cleaned).suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refused(cleaned)
    try:
        found = model_dirs.locate("loras", cleaned)
        pickled = None if found else model_dirs.locate("loras", cleaned, sorted(PICKLE_SUFFIXES))
    except ModelNotFound as exc:  # the same stem in two subfolders
        raise InvalidInput(exc.message, where=exc.where, hint=exc.hint) from exc
    if found is not None:
        return found
    if pickled is not None:
        raise _pickle_refused(pickled.name)
    folders = model_dirs.folders("loras")
    raise InvalidInput(
        f"LoRA {cleaned!r} was not found",
        where=searched_folders(folders),
        hint=put_file_into(cleaned, folders, no_folder="the loras folder") + fetch_suggestion(cleaned),
    )


def _pickle_refused(name: str) -> InvalidInput:
    return InvalidInput(
        f"LoRA {name} is a pickle-based file; fooocusd refuses those because loading one can run "
        "arbitrary code",
        where="loras",
        hint="download the .safetensors version of this LoRA (most model pages offer one)",
    )


def lora_layout(keys: Sequence[str], file_name: str) -> LoraLayout:
    """Which key layout a LoRA file uses; anything that is not a LoRA is refused with the reason."""
    tensors = [key for key in keys if key != "__metadata__"]
    if not tensors:
        raise _not_a_lora(file_name, "it holds no tensors")
    if any(key.startswith(_KOHYA_PREFIXES) for key in tensors):
        if any(marker in key for key in tensors for marker in _LYCORIS_MARKERS):
            raise InvalidInput(
                f"{file_name} is a LyCORIS (LoHa/LoKr/OFT) network, which fooocusd cannot apply yet",
                where=file_name,
                hint="use a plain LoRA (LoCon/LoRA) version of it",
            )
        return "kohya"
    if any(
        key.startswith(_DIFFUSERS_PREFIXES) and any(marker in key for marker in _DIFFUSERS_MARKERS)
        for key in tensors
    ):
        return "diffusers"
    if any(key.startswith(_CHECKPOINT_PREFIXES) for key in tensors):
        raise InvalidInput(
            f"{file_name} is a full model checkpoint, not a LoRA",
            where=file_name,
            hint="put it into the checkpoints folder and name it as the job's model or refiner",
        )
    raise _not_a_lora(file_name, "none of its tensors are LoRA weights (kohya or diffusers names)")


def _not_a_lora(file_name: str, reason: str) -> InvalidInput:
    return InvalidInput(
        f"{file_name} is not a LoRA fooocusd can read: {reason}",
        where=file_name,
        hint="use an SDXL LoRA in .safetensors format (kohya or diffusers layout); "
        "a partial download is a common cause, so download it again",
    )


def read_lora(path: Path) -> dict[str, Any]:
    """The file's tensors, after checking it really is a LoRA."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix.lower() != SAFE_SUFFIX:
        raise _not_a_lora(path.name, f"expected a {SAFE_SUFFIX} file")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _not_a_lora(path.name, f"it is not a readable .safetensors file ({exc})") from exc
    lora_layout(list(state), path.name)
    return state


class LoraAdapters:
    """The LoRA adapters loaded on one pipeline, and which of them the current image uses."""

    def __init__(
        self,
        model_dirs: ModelDirs,
        hash_cache: Path,
        capacity: int = ADAPTER_CACHE_SIZE,
        *,
        fold: bool = True,
    ) -> None:
        if capacity < MAX_LORAS_PER_IMAGE:
            raise ValueError(f"capacity {capacity} cannot hold one image's {MAX_LORAS_PER_IMAGE} LoRAs")
        self._model_dirs = model_dirs
        self._hash_cache = hash_cache
        self._capacity = capacity
        self._loaded: OrderedDict[str, str] = OrderedDict()  # sha256 → adapter name, oldest first
        self._folded = FoldedUNetLoras()
        self.fold = fold
        """Fold the active UNet adapters into its weights (off for fp8 weights and low-VRAM mode)."""
        self.files_loaded = 0
        """How many times a LoRA file was read and injected (cache misses)."""

    @property
    def loaded(self) -> list[str]:
        """Adapter names on the pipeline, least recently used first."""
        return list(self._loaded.values())

    def forget(self) -> None:
        """The pipeline was replaced: its adapters went with it."""
        self._loaded.clear()
        self._folded.forget()

    @property
    def folded(self) -> tuple[tuple[str, float], ...]:
        """The (adapter, weight) pairs folded into the UNet's weights now."""
        return self._folded.folded

    def resolve(self, loras: Sequence[tuple[str, float]]) -> list[tuple[LoraFile, float]]:
        """Find and hash every LoRA; the same file twice becomes one entry with the summed weight."""
        if len(loras) > MAX_LORAS_PER_IMAGE:
            raise too_many_loras(len(loras))
        merged: dict[str, tuple[LoraFile, float]] = {}
        for name, weight in loras:
            if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
                raise InvalidInput(
                    f"LoRA {name!r} has weight {weight}, outside {MIN_LORA_WEIGHT:g}..{MAX_LORA_WEIGHT:g}",
                    where="loras",
                    hint="use a weight between -2 and 2 (1.0 is the LoRA as trained, 0 turns it off)",
                )
            path = find_lora(self._model_dirs, name)
            sha256 = file_sha256(path, self._hash_cache)
            if sha256 in merged:
                first, total = merged[sha256]
                merged[sha256] = (first, total + weight)
            else:
                merged[sha256] = (LoraFile(name=name.strip(), path=path, sha256=sha256), weight)
        return list(merged.values())

    def apply(self, pipeline: Any, loras: Sequence[tuple[str, float]]) -> list[AppliedLora]:
        """Make exactly ``loras`` active on ``pipeline`` at their weights; returns what was applied."""
        wanted = self.resolve(loras)
        if not wanted:
            self._folded.restore()
            if self._loaded:
                pipeline.disable_lora()
            return []
        applied = [
            AppliedLora(file=file, weight=weight, adapter=self._ensure_loaded(pipeline, file))
            for file, weight in wanted
        ]
        self._evict(pipeline, keep={item.file.sha256 for item in applied})
        pipeline.enable_lora()
        pipeline.set_adapters([item.adapter for item in applied], [item.weight for item in applied])
        if self.fold:
            self._folded.fold(pipeline.unet, [(item.adapter, item.weight) for item in applied])
        else:
            self._folded.restore()
        return applied

    def _ensure_loaded(self, pipeline: Any, file: LoraFile) -> str:
        adapter = self._loaded.get(file.sha256)
        if adapter is not None:
            self._loaded.move_to_end(file.sha256)
            return adapter
        adapter = f"lora_{file.sha256[:16]}"
        state = read_lora(file.path)
        try:
            with _quiet_adapter_loading():
                pipeline.load_lora_weights(state, adapter_name=adapter)
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            with contextlib.suppress(Exception):
                pipeline.delete_adapters(adapter)  # drop whatever half got injected
            raise InvalidInput(
                f"LoRA {file.name} ({file.path.name}) does not fit this model: {type(exc).__name__}: {exc}",
                where=str(file.path),
                hint=_wrong_family_hint(pipeline),
            ) from exc
        self._loaded[file.sha256] = adapter
        self.files_loaded += 1
        return adapter

    def _evict(self, pipeline: Any, keep: set[str]) -> None:
        for sha256 in list(self._loaded):
            if len(self._loaded) <= self._capacity:
                return
            if sha256 in keep:
                continue
            pipeline.delete_adapters(self._loaded.pop(sha256))


def _wrong_family_hint(pipeline: Any) -> str:
    if getattr(pipeline, "text_encoder_2", None) is not None:
        return "use a LoRA trained for SDXL; SD 1.5 and Flux LoRAs do not work on SDXL models"
    return "use a LoRA trained for this model's family (SD 1.5 or SD 2.x); SDXL LoRAs do not fit it"


def too_many_loras(count: int) -> InvalidInput:
    return InvalidInput(
        f"{count} LoRAs were asked for one image; at most {MAX_LORAS_PER_IMAGE} are allowed",
        where="loras",
        hint=f"the preset and job may name up to 5, and <lora:...> tags in the prompt add to them up to "
        f"{MAX_LORAS_PER_IMAGE} in all (the performance LoRA counts too); remove some",
    )


@contextlib.contextmanager
def _quiet_adapter_loading() -> Iterator[None]:
    """peft and transformers report every adapter load at length; a daemon's log is not the place."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


def with_inline_loras(request: GenerationRequest) -> GenerationRequest:
    """Move ``<lora:name:weight>`` tags from the prompt into ``request.loras`` (after the listed ones).

    As in Fooocus, a tag naming a LoRA the request already lists (from the preset, the performance
    mode, the job, or an earlier tag) is skipped, and the tags are removed from the encoded text.
    """
    prompt, tags = parse_inline_loras(request.prompt)
    if not tags:
        return request
    added = loras_from_tags(request.loras, tags)
    total = len(request.loras) + len(added)
    if total > MAX_LORAS_PER_IMAGE:
        error = too_many_loras(total)
        error.message += f" ({len(request.loras)} from the preset/job and {len(added)} <lora:...> tags)"
        error.where = "prompt"
        raise error
    return replace(request, prompt=prompt, loras=(*request.loras, *added))
