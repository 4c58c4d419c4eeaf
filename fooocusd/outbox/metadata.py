"""What we record about each image, and the two text forms other tools can read.

* ``build_record`` → the sidecar record (plain JSON types), the source of truth.
* ``a1111_parameters`` → A1111 "infotext", read by civitai, sd-parsers and A1111's PNG Info.
* ``fooocus_scheme`` → JSON in the style of Fooocus's own metadata scheme (sorted keys).

Both text forms are derived from the record only, so an image can be re-labelled from its
sidecar alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, overload

import fooocusd
from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.outbox.naming import model_stem

RECORD_SCHEMA = 1
SHORT_HASH_CHARS = 10

# A1111 display names for the k-diffusion/Comfy sampler ids Fooocus uses.
A1111_SAMPLER_NAMES: dict[str, str] = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "heunpp2": "Heun++ 2",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "ddpm": "DDPM",
    "lcm": "LCM",
    "tcd": "TCD",
    "restart": "Restart",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC",
}
# A1111 has no "<name> Karras" entry for these, so the suffix would make the name unknown there.
_NO_KARRAS_VARIANT = {
    "Euler",
    "Euler a",
    "Heun",
    "Heun++ 2",
    "DPM fast",
    "DPM adaptive",
    "DDIM",
    "UniPC",
    "DDPM",
    "LCM",
    "TCD",
    "Restart",
}

A1111_SCHEDULE_NAMES: dict[str, str] = {
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "normal": "Normal",
    "ddim_uniform": "DDIM",
    "align_your_steps": "Align Your Steps",
    "turbo": "Turbo",
    "lcm": "LCM",
    "tcd": "TCD",
    "edm_playground_v2.5": "EDM Playground v2.5",
}

# Fooocus shows performance modes by these labels; using them lets Fooocus import our images.
FOOOCUS_PERFORMANCE_NAMES: dict[str, str] = {
    "quality": "Quality",
    "speed": "Speed",
    "extreme_speed": "Extreme Speed",
    "lightning": "Lightning",
    "hyper_sd": "Hyper-SD",
}


def short_hash(sha256_hex: str) -> str:
    """AutoV2-style short hash: the first 10 hex characters of the file's SHA-256."""
    return sha256_hex.strip().lower()[:SHORT_HASH_CHARS]


def version_label() -> str:
    return f"fooocusd {fooocusd.__version__}"


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``; naive datetimes are taken as UTC."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ImageFacts:
    """Everything the sidecar records about one finished image.

    ``full_prompt`` / ``full_negative_prompt`` are the texts actually encoded (after styles and
    prompt expansion); when empty, the raw prompt (plus extra prompts) stands in for them.
    """

    job_id: str | int
    input_name: str
    input_sha256: str
    prompt: str
    negative: str
    seed: int
    steps: int
    sampler: str
    scheduler: str
    cfg: float
    sharpness: float
    width: int
    height: int
    performance: str
    model_name: str
    model_sha256: str
    device: str
    dtype: str
    image_index: int
    image_count: int
    output_name: str
    fmt: str
    extra_prompts: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    full_prompt: tuple[str, ...] = ()
    full_negative_prompt: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    created: datetime | None = None
    components: Mapping[str, Any] = field(default_factory=dict)
    """``loras``, ``refiner``, ``refiner_switch`` and ``vae`` (see ``component_facts``)."""

    @classmethod
    def from_generation(
        cls,
        request: GenerationRequest,
        generated: GeneratedImage,
        *,
        job_id: str | int,
        input_name: str,
        input_sha256: str,
        image_index: int,
        image_count: int,
        output_name: str,
        fmt: str,
        created: datetime | None = None,
    ) -> ImageFacts:
        """Combine what was asked for with what the engine reports it did.

        The engine may report the encoded prompts in ``generated.extra["full_prompt"]`` and
        ``generated.extra["full_negative_prompt"]`` (lists of strings).
        """
        return cls(
            job_id=job_id,
            input_name=input_name,
            input_sha256=input_sha256,
            prompt=request.prompt,
            negative=request.negative,
            seed=request.seed,
            steps=request.steps,
            sampler=request.sampler,
            scheduler=request.scheduler,
            cfg=request.cfg,
            sharpness=request.sharpness,
            width=generated.width,
            height=generated.height,
            performance=request.performance,
            model_name=PurePath(generated.model_name or generated.model_path or request.model).name,
            model_sha256=generated.model_sha256,
            device=generated.device,
            dtype=generated.dtype,
            image_index=image_index,
            image_count=image_count,
            output_name=output_name,
            fmt=fmt,
            extra_prompts=tuple(request.extra_prompts),
            styles=tuple(request.styles),
            full_prompt=_string_tuple(generated.extra.get("full_prompt")),
            full_negative_prompt=_string_tuple(generated.extra.get("full_negative_prompt")),
            timings=dict(generated.timings),
            created=created,
            components=component_facts(request, generated),
        )


def _string_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    return ()


@overload
def build_record(facts: ImageFacts, /) -> dict[str, Any]: ...


@overload
def build_record(
    *,
    request: GenerationRequest,
    generated: GeneratedImage,
    job_id: str | int,
    input_name: str,
    input_sha256: str,
    image_index: int,
    image_count: int,
    output_name: str,
    fmt: str,
    created: datetime | None = None,
) -> dict[str, Any]: ...


def build_record(facts: ImageFacts | None = None, /, **generation: Any) -> dict[str, Any]:
    """The sidecar record: flat, JSON-serialisable, stable key names (``schema`` versions it).

    Pass an ``ImageFacts``, or the keyword arguments of ``ImageFacts.from_generation``.
    """
    if facts is None:
        facts = ImageFacts.from_generation(**generation)
    elif generation:
        raise TypeError("build_record takes an ImageFacts or keyword arguments, not both")
    raw_positive = [facts.prompt, *facts.extra_prompts] if facts.prompt else list(facts.extra_prompts)
    raw_negative = [facts.negative] if facts.negative else []
    return {
        "schema": RECORD_SCHEMA,
        "job_id": facts.job_id,
        "input_file": facts.input_name,
        "input_sha256": facts.input_sha256,
        "prompt": facts.prompt,
        "extra_prompts": list(facts.extra_prompts),
        "negative": facts.negative,
        "full_prompt": list(facts.full_prompt) or raw_positive,
        "full_negative_prompt": list(facts.full_negative_prompt) or raw_negative,
        "styles": list(facts.styles),
        "seed": facts.seed,
        "steps": facts.steps,
        "sampler": facts.sampler,
        "scheduler": facts.scheduler,
        "cfg": float(facts.cfg),
        "sharpness": float(facts.sharpness),
        "width": facts.width,
        "height": facts.height,
        "performance": facts.performance,
        "model": facts.model_name,
        "model_sha256": facts.model_sha256.lower(),
        "model_hash": short_hash(facts.model_sha256),
        "timings": {stage: round(float(seconds), 4) for stage, seconds in facts.timings.items()},
        "fooocusd_version": fooocusd.__version__,
        "device": facts.device,
        "dtype": facts.dtype,
        "created": iso_utc(facts.created or datetime.now(UTC)),
        "image_index": facts.image_index,
        "image_count": facts.image_count,
        "output_file": facts.output_name,
        "format": facts.fmt,
        **component_facts_or_defaults(facts.components),
    }


def a1111_sampler_name(sampler: str, scheduler: str) -> str:
    """``dpmpp_2m_sde_gpu`` + ``karras`` → ``DPM++ 2M SDE Karras`` (as A1111 names it)."""
    name = A1111_SAMPLER_NAMES.get(sampler, sampler)
    if scheduler == "karras" and name not in _NO_KARRAS_VARIANT:
        name = f"{name} Karras"
    return name


def a1111_parameters(record: Mapping[str, Any]) -> str:
    """A1111 infotext: prompt line(s), ``Negative prompt: …``, then one ``Key: value, …`` line."""
    positive = ", ".join(record.get("full_prompt") or []) or record.get("prompt", "")
    negative = ", ".join(record.get("full_negative_prompt") or []) or record.get("negative", "")
    raw_prompt = "\n".join([record.get("prompt", ""), *record.get("extra_prompts", [])]).strip("\n")

    pairs: list[tuple[str, Any]] = [
        ("Steps", record["steps"]),
        ("Sampler", a1111_sampler_name(record["sampler"], record["scheduler"])),
        ("Schedule type", A1111_SCHEDULE_NAMES.get(record["scheduler"], record["scheduler"])),
        ("CFG scale", record["cfg"]),
        ("Seed", record["seed"]),
        ("Size", f"{record['width']}x{record['height']}"),
    ]
    if record.get("model_hash"):
        pairs.append(("Model hash", record["model_hash"]))
    pairs += [
        ("Model", model_stem(record.get("model", ""))),
        ("Sharpness", record["sharpness"]),
        ("Version", version_label()),
        ("Performance", FOOOCUS_PERFORMANCE_NAMES.get(record["performance"], record["performance"])),
    ]
    pairs += a1111_component_pairs(record)
    if record.get("styles"):
        pairs.append(("Styles", ", ".join(record["styles"])))
    if record.get("expanded_prompt"):  # Fooocus's label for the "Fooocus V2" prompt expansion
        pairs.append(("Fooocus V2 Expansion", record["expanded_prompt"]))
    # The prompt line holds the styled/expanded text; keep what the user wrote as well.
    if raw_prompt and raw_prompt != positive:
        pairs.append(("Raw prompt", raw_prompt))
    if record.get("negative") and record["negative"] != negative:
        pairs.append(("Raw negative prompt", record["negative"]))

    lines = [positive] if positive else []
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{key}: {_a1111_quote(value)}" for key, value in pairs if value != ""))
    return "\n".join(lines)


def _a1111_quote(value: Any) -> str:
    """Quote like A1111: a value that would break the ``k: v, k: v`` line becomes a JSON string."""
    text = str(value)
    if any(char in text for char in ',:\n"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def fooocus_scheme(record: Mapping[str, Any]) -> str:
    """JSON with sorted keys, in the style of Fooocus's ``fooocus`` metadata scheme.

    ASCII-only on purpose: it travels in PNG tEXt (Latin-1) and EXIF MakerNote unharmed.
    """
    scheme: dict[str, Any] = {
        # Fooocus's prompt box: the main prompt, then one extra prompt per line.
        "prompt": "\n".join([record.get("prompt", ""), *record.get("extra_prompts", [])]).strip("\n"),
        "negative_prompt": record.get("negative", ""),
        "full_prompt": list(record.get("full_prompt") or []),
        "full_negative_prompt": list(record.get("full_negative_prompt") or []),
        "styles": list(record.get("styles") or []),
        "performance": FOOOCUS_PERFORMANCE_NAMES.get(record["performance"], record["performance"]),
        "steps": record["steps"],
        "resolution": f"({record['width']}, {record['height']})",
        "guidance_scale": record["cfg"],
        "sharpness": record["sharpness"],
        "sampler": record["sampler"],
        "scheduler": record["scheduler"],
        # A string, as Fooocus writes it: 64-bit seeds do not survive JavaScript's numbers.
        "seed": str(record["seed"]),
        "base_model": model_stem(record.get("model", "")),
        "base_model_hash": record.get("model_hash", ""),
        "metadata_scheme": "fooocus",
        "version": version_label(),
    }
    scheme.update(fooocus_component_keys(record))
    if record.get("expanded_prompt"):
        scheme["prompt_expansion"] = record["expanded_prompt"]
    return json.dumps(scheme, sort_keys=True, ensure_ascii=True)


# -- LoRAs, refiner, VAE, ADM ------------------------------------------------------------------


def component_facts(request: GenerationRequest, generated: GeneratedImage) -> dict[str, Any]:
    """What the engine reports about LoRAs, refiner and VAE (``generated.extra``), else the request's."""
    extra = generated.extra
    facts: dict[str, Any] = {
        "loras": [dict(entry) for entry in extra.get("loras", [])],
        "refiner": dict(extra["refiner"]) if extra.get("refiner") else None,
        "refiner_switch": float(extra.get("refiner_switch", request.refiner_switch)),
        "vae": str(extra.get("vae") or request.vae or "default"),
    }
    if extra.get("vae_sha256"):
        facts["vae_sha256"] = str(extra["vae_sha256"])
        facts["vae_hash"] = short_hash(str(extra["vae_sha256"]))
    if extra.get("model_family"):  # sdxl, sd15 or sd2 (engine/router.py)
        facts["model_family"] = str(extra["model_family"])
    if extra.get("embeddings"):  # textual inversions the prompts used: name, sha256, hash
        facts["embeddings"] = [dict(entry) for entry in extra["embeddings"]]
    return facts


def component_facts_or_defaults(components: Mapping[str, Any]) -> dict[str, Any]:
    return {"loras": [], "refiner": None, "refiner_switch": 1.0, "vae": "default", **components}


def a1111_component_pairs(record: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """ADM guidance, adaptive CFG, CLIP skip, refiner, VAE and LoRAs as A1111/Fooocus infotext keys."""
    pairs: list[tuple[str, Any]] = []
    adm = record.get("adm_guidance")
    if adm:
        pairs.append(("ADM Guidance", "(" + ", ".join(str(value) for value in adm) + ")"))
    if record.get("adaptive_cfg") is not None:
        pairs.append(("Adaptive CFG", record["adaptive_cfg"]))
    if record.get("clip_skip") is not None:
        pairs.append(("Clip skip", record["clip_skip"]))
    refiner = record.get("refiner")
    if refiner:
        pairs += [
            ("Refiner", model_stem(refiner["name"])),
            ("Refiner hash", refiner.get("hash", "")),
            ("Refiner switch", refiner.get("switch", record.get("refiner_switch", ""))),
        ]
    if record.get("vae"):
        pairs.append(("VAE", "Default (model)" if record["vae"] == "default" else model_stem(record["vae"])))
    loras = record.get("loras") or []
    if loras:
        hashes = [f"{model_stem(entry['name'])}: {entry.get('hash', '')}" for entry in loras]
        weights = [f"{model_stem(entry['name'])}: {entry['weight']}" for entry in loras]
        pairs += [("Lora hashes", ", ".join(hashes)), ("Lora weights", ", ".join(weights))]
    return pairs


def fooocus_component_keys(record: Mapping[str, Any]) -> dict[str, Any]:
    """Fooocus's scheme keys for the refiner, VAE, LoRAs ([stem, weight, hash]), ADM guidance, adaptive
    CFG and CLIP skip."""
    refiner = record.get("refiner")
    keys: dict[str, Any] = {
        "refiner_model": model_stem(refiner["name"]) if refiner else "None",
        "refiner_switch": record.get("refiner_switch", 1.0),
        "vae": "Default (model)" if record.get("vae", "default") == "default" else model_stem(record["vae"]),
        "loras": [[model_stem(e["name"]), e["weight"], e.get("hash", "")] for e in record.get("loras") or []],
    }
    if refiner:
        keys["refiner_model_hash"] = refiner.get("hash", "")
    if record.get("adm_guidance"):
        keys["adm_guidance"] = "(" + ", ".join(str(value) for value in record["adm_guidance"]) + ")"
    for key in ("adaptive_cfg", "clip_skip"):  # Fooocus's keys for CFG mimicking and CLIP skip
        if record.get(key) is not None:
            keys[key] = record[key]
    return keys
