"""The meaning of job values: user spellings → canonical values, and a spec → concrete requests.

Precedence for every generation setting is job > preset > daemon defaults. A job field counts
as "given" only when the job file actually set it (pydantic's ``model_fields_set``), so a job
that leaves ``images`` or ``negative`` out still picks up the preset's value. Two exceptions:

- A fast performance mode (Extreme Speed, Lightning, Hyper-SD) forces its sampler, scheduler and
  guidance over every layer, and adds its LoRA (see ``performance.py``). ``request.performance``
  records the mode, so ``forced_settings(request.performance)`` tells what was overridden.
- With ``engine.model = "tiny-random"`` (the built-in plumbing model) a preset's checkpoint,
  refiner and VAE files are not used: they belong to real SDXL models. A job's own values still are.

LoRAs are collected in order: the preset's, the performance mode's, then the job's. A later entry
for the same file replaces the earlier one's weight (so a job can turn a preset's LoRA off with
weight 0), and LoRAs of weight 0 are left out.
"""

from __future__ import annotations

import math
import random
import re
from typing import TYPE_CHECKING, Any, get_args

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.models import TINY_MODEL
from fooocusd.jobs.performance import forced_settings, performance_lora, steps_for
from fooocusd.jobs.spec import (
    MAX_SEED,
    ImageAction,
    JobSpec,
    LoraSpec,
    OutputFormat,
    Performance,
    parse_aspect,
)
from fooocusd.settings import GenerationSettings

if TYPE_CHECKING:
    from fooocusd.jobs.presets import Preset

SEED_MODULUS = MAX_SEED + 1  # 2**63: image i uses (seed + i) mod 2**63

# The 26 SDXL sizes Fooocus offers (width, height); all about one megapixel, multiples of 64.
SDXL_SIZES: tuple[tuple[int, int], ...] = (
    (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152),
    (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960),
    (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1536, 640), (1600, 640),
    (1664, 576), (1728, 576),
)  # fmt: skip

DEFAULT_REFINER_SWITCH = 0.8  # Fooocus's default_refiner_switch
_NO_FILE = {"", "none", "default", "default (model)"}  # "no refiner" / "the checkpoint's own VAE"

PERFORMANCE_NAMES: tuple[str, ...] = get_args(Performance)
IMAGE_ACTIONS: tuple[str, ...] = get_args(ImageAction)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)

_PERFORMANCE_ALIASES = {"hypersd": "hyper_sd", "extremespeed": "extreme_speed", "lcm": "extreme_speed"}
_FORMAT_ALIASES = {"jpg": "jpeg"}
_SIZE = re.compile(r"^\s*\(?\s*(\d+)\s*[*xX×,]\s*(\d+)\s*\)?\s*$")  # Fooocus's logs: "(1152, 896)"
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:/]\s*(\d+(?:\.\d+)?)\s*$")

ASPECT_HELP = "write width*height (e.g. 1152*896) or a ratio such as 16:9, 9:7 or 1:1"
PERFORMANCE_HELP = "use one of: Quality, Speed, Extreme Speed, Lightning, Hyper-SD"
ACTION_HELP = "use one of: " + ", ".join(IMAGE_ACTIONS)
FORMAT_HELP = "use one of: png, jpeg (or jpg), webp"


def _word_key(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().lower())


def nearest_sdxl_size(ratio: float) -> tuple[int, int]:
    """The Fooocus SDXL size whose width/height is closest to ``ratio`` (compared on a log scale)."""
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"aspect ratio must be a positive number, got {ratio!r}")
    target = math.log(ratio)
    return min(SDXL_SIZES, key=lambda size: abs(math.log(size[0] / size[1]) - target))


def normalise_aspect(text: str) -> str:
    """``1152*896``, ``1152x896`` or ``1152×896`` as given; ``16:9`` or ``16/9`` → nearest SDXL size."""
    size = _SIZE.match(text)
    if size:
        width, height = parse_aspect(f"{size.group(1)}*{size.group(2)}")
        return f"{width}*{height}"
    ratio = _RATIO.match(text)
    if ratio:
        across, down = float(ratio.group(1)), float(ratio.group(2))
        if across <= 0 or down <= 0:
            raise ValueError(f"aspect ratio {text.strip()!r} has a zero side")
        width, height = nearest_sdxl_size(across / down)
        return f"{width}*{height}"
    raise ValueError(f"cannot read aspect {text.strip()!r}")


def normalise_performance(text: str) -> str:
    """ "Extreme Speed", "extreme-speed", "EXTREME_SPEED" → ``extreme_speed``; "Hyper-SD" → ``hyper_sd``."""
    key = _word_key(text)
    key = _PERFORMANCE_ALIASES.get(key, key)
    if key not in PERFORMANCE_NAMES:
        raise ValueError(f"unknown performance {text.strip()!r}")
    return key


def normalise_image_action(text: str) -> str:
    """ "Vary (Subtle)" → ``vary_subtle``; "Upscale (1.5x)" → ``upscale_1.5x``; "upscale-2x" as named."""
    key = _word_key(text.replace("(", " ").replace(")", " "))
    key = re.sub(r"_+", "_", key).strip("_")
    if key not in IMAGE_ACTIONS:
        raise ValueError(f"unknown image action {text.strip()!r}")
    return key


def normalise_output_format(text: str) -> str:
    key = text.strip().lower().lstrip(".")
    key = _FORMAT_ALIASES.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {text.strip()!r}")
    return key


def fix_seed(spec: JobSpec, rng: random.Random) -> JobSpec:
    """Give a random-seed job its seed now, at queue time, so a retry or restart repeats the same images."""
    if spec.seed is not None:
        return spec
    return spec.model_copy(update={"seed": rng.randint(0, MAX_SEED)})


def image_seeds(seed: int, count: int, *, increment: bool = True) -> list[int]:
    """Image i uses ``(seed + i) mod 2**63``; with the increment disabled every image shares ``seed``."""
    if not increment:
        return [seed] * count
    return [(seed + index) % SEED_MODULUS for index in range(count)]


def resolve_requests(
    spec: JobSpec, preset: Preset | None, defaults: GenerationSettings, model: str
) -> list[GenerationRequest]:
    """One concrete request per image. ``spec.seed`` must already be fixed (see ``fix_seed``).

    ``model`` is the daemon's configured model (``engine.model``); a preset's or the job's
    ``model`` replaces it, except that presets' files are ignored for ``tiny-random``.
    Image jobs (``spec.image`` set) get the same requests; the caller reads ``spec.image``
    and ``spec.image_action`` for the image step.
    """
    if spec.seed is None:
        raise ValueError("resolve_requests needs a fixed seed: call fix_seed when the job is queued")

    def pick(field: str, default: Any) -> Any:
        if field in spec.model_fields_set and getattr(spec, field) is not None:
            return getattr(spec, field)
        if preset is not None and getattr(preset, field) is not None:
            return getattr(preset, field)
        return default

    def pick_file(field: str) -> str:
        if model == TINY_MODEL and field not in spec.model_fields_set:
            return ""  # a preset's model files do not fit the built-in tiny model
        value = pick(field, "")
        return "" if value.strip().lower() in _NO_FILE else value

    width, height = parse_aspect(pick("aspect", defaults.aspect))
    performance = pick("performance", defaults.performance)
    steps = _steps(spec, preset, defaults)
    count = pick("images", defaults.images)
    shared = {
        "prompt": spec.prompt,
        "negative": pick("negative", defaults.negative),
        "width": width,
        "height": height,
        "steps": steps,
        "cfg": float(pick("cfg", defaults.cfg)),
        "sampler": pick("sampler", defaults.sampler),
        "scheduler": pick("scheduler", defaults.scheduler),
        "model": pick_file("model") or model,
        "extra_prompts": tuple(spec.extra_prompts),
        "sharpness": float(pick("sharpness", defaults.sharpness)),
        "adaptive_cfg": float(pick("adaptive_cfg", defaults.adaptive_cfg)),
        "adm_scaler_positive": float(pick("adm_scaler_positive", defaults.adm_scaler_positive)),
        "adm_scaler_negative": float(pick("adm_scaler_negative", defaults.adm_scaler_negative)),
        "adm_scaler_end": float(pick("adm_scaler_end", defaults.adm_scaler_end)),
        "clip_skip": int(pick("clip_skip", defaults.clip_skip)),
        "styles": tuple(pick("styles", defaults.styles)),
        "performance": performance,
        "wildcards_in_order": spec.wildcards_in_order,
        "loras": _merged_loras(preset.loras if preset else None, performance_lora(performance), spec.loras),
        "refiner": pick_file("refiner"),
        "refiner_switch": float(pick("refiner_switch", DEFAULT_REFINER_SWITCH)),
        "vae": pick_file("vae"),
    }
    shared.update(forced_settings(performance))
    seeds = image_seeds(spec.seed, count, increment=not spec.disable_seed_increment)
    return [GenerationRequest(seed=seed, **shared) for seed in seeds]


def lora_key(name: str) -> str:
    """Two spellings of one LoRA file (with or without ``.safetensors``, any case) share a key."""
    return name.strip().lower().removesuffix(".safetensors")


def _merged_loras(
    preset_loras: list[LoraSpec] | None,
    performance: tuple[str, float] | None,
    job_loras: list[LoraSpec] | None,
) -> tuple[tuple[str, float], ...]:
    merged: dict[str, tuple[str, float]] = {}
    layers = [
        [(lora.name, lora.weight) for lora in preset_loras or ()],
        [performance] if performance else [],
        [(lora.name, lora.weight) for lora in job_loras or ()],
    ]
    for layer in layers:
        for name, weight in layer:
            merged[lora_key(name)] = (name, float(weight))  # keeps the first position, takes the new weight
    return tuple(entry for entry in merged.values() if entry[1] != 0.0)


def output_format_for(spec: JobSpec, preset: Preset | None, configured: str) -> str:
    """The file format for a job's images: job > preset > ``outbox.format``."""
    if spec.output_format is not None:
        return spec.output_format
    if preset is not None and preset.output_format is not None:
        return preset.output_format
    return configured


def _steps(spec: JobSpec, preset: Preset | None, defaults: GenerationSettings) -> int:
    # The highest layer that says anything about speed decides; inside a layer an explicit
    # step count beats the performance mode. So a job asking for Lightning gets 4 steps even
    # when its preset pins steps = 40.
    layers: list[tuple[int | None, str | None]] = [(spec.steps, spec.performance)]
    if preset is not None:
        layers.append((preset.steps, preset.performance))
    for steps, performance in layers:
        if steps is not None:
            return steps
        if performance is not None:
            return steps_for(performance)
    return steps_for(defaults.performance)
