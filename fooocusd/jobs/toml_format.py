"""``.toml`` job files, and the key vocabulary that ``.txt`` files and presets share.

A file is either one job (every JobSpec field as a top-level key) or several ``[[job]]``
tables; top-level keys next to ``[[job]]`` tables are shared defaults that each job may override.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fooocusd.errors import InvalidInput, shown_value, suggest
from fooocusd.jobs.resolve import (
    ACTION_HELP,
    ASPECT_HELP,
    FORMAT_HELP,
    PERFORMANCE_HELP,
    normalise_aspect,
    normalise_image_action,
    normalise_output_format,
    normalise_performance,
)
from fooocusd.jobs.spec import MAX_SEED, JobSpec

JOB_FIELDS: tuple[str, ...] = tuple(JobSpec.model_fields)
KEY_ALIASES: dict[str, str] = {
    "format": "output_format",
    "action": "image_action",
    "negative_prompt": "negative",
    "aspect_ratio": "aspect",
    # A1111's "Size: 1024x1024"; in a .txt only with such a value (``txt_format.PROSE_KEYS``).
    "size": "aspect",
    "resolution": "aspect",
    "image_prompt": "image_prompts",
    "note": "notes",
    # The names Fooocus-API requests, Fooocus's presets, A1111 and diffusers use, for scripts and
    # habits brought from them. Only names that cannot be mistaken for prompt text in a .txt line.
    "image_number": "images",
    "image_seed": "seed",
    "guidance_scale": "cfg",
    "cfg_scale": "cfg",
    "num_inference_steps": "steps",
    "sampler_name": "sampler",
    "style_selections": "styles",
    "performance_selection": "performance",
    "aspect_ratios_selection": "aspect",
    "base_model_name": "model",
    "refiner_model_name": "refiner",
    "save_extension": "output_format",
    "read_wildcards_in_order": "wildcards_in_order",
}
SIZE_KEYS = ("width", "height")
"""Not fields: together they are read as ``aspect = "<width>*<height>"``."""
RANDOM_SEED_WORDS = frozenset({"random", "-1"})

KEY_HELP: dict[str, str] = {
    "prompt": "write the prompt as text",
    "extra_prompts": 'give a list of strings, e.g. ["soft light", "film grain"]',
    "negative": "write the negative prompt as text",
    "seed": f"use a whole number from 0 to {MAX_SEED}, or 'random'",
    "images": "use a whole number from 1 to 32",
    "disable_seed_increment": "use true or false",
    "preset": "use the name of a file in the presets folder, without .toml",
    "styles": "list style names, separated by commas",
    "aspect": ASPECT_HELP,
    "steps": "use a whole number from 1 to 200",
    "performance": PERFORMANCE_HELP,
    "cfg": "use a number from 1 to 30 (4 is a good start)",
    "sharpness": "use a number from 0 to 30 (2 is the default)",
    "adaptive_cfg": "use a number from 1 to 30 (7 is the default)",
    "adm_scaler_positive": "use a number from 0.1 to 3 (1.5 is the default)",
    "adm_scaler_negative": "use a number from 0.1 to 3 (0.8 is the default)",
    "adm_scaler_end": "use a number from 0 to 1 (0.3 is the default)",
    "clip_skip": "use a whole number from 1 to 12 (2 is the default)",
    "sampler": "use a sampler name such as dpmpp_2m_sde_gpu",
    "scheduler": "use a scheduler name such as karras",
    "model": "use a checkpoint file name from the models folder, or 'default' for the configured one",
    "output_format": FORMAT_HELP,
    "priority": "use a whole number from -100 to 100 (higher runs first)",
    "name": "use a plain file name without '/' or '\\' and not starting with '.'",
    "image": "give the image's path relative to the job file, inside the inbox",
    "image_action": ACTION_HELP,
    "loras": (
        'list LoRAs as [{ name = "x", weight = 0.8 }], ["x:0.8"] or [["x", 0.8]] (weights -2 to 2, at most 5)'
    ),
    "refiner": "use a checkpoint file name from the models folder, or 'none'",
    "refiner_switch": "use a number from 0.1 to 1 (0.8 is usual for the SDXL refiner; 1 = no refiner)",
    "vae": "use a file name from the vae folder, or 'default' for the model's own",
    "mask": "give the mask image's path (white = repaint), relative to the job file",
    "denoise": "use a number above 0 and at most 1 (vary: 0.5 subtle, 0.85 strong; upscale 0.382)",
    "upscale_factor": "use a number from 1 to 8, e.g. 3 or 2.5",
    "upscale_model": "use a file name from the upscale_models folder, e.g. RealESRGAN_x4plus",
    "inpaint_model": "use an SDXL inpainting checkpoint from the models folder, or 'none' for the base model",
    "outpaint": 'list sides from left, right, top, bottom, e.g. ["left", "right"] or \'left, right\'',
    "outpaint_distance": "use a fraction of the side (0.3 = 30%) or a number of pixels above 1 (e.g. 256)",
    "save_control_images": "use true or false",
    "notes": 'write a note as text, or several as a list, e.g. ["for the Acme brief", "v2"]',
    "image_prompts": 'list up to 4, e.g. [{ image = "ref.png", type = "pyracanny", weight = 0.6, '
    "stop_at = 0.5 }] "
    'or ["ref.png pyracanny 0.6 0.5"]; types: image_prompt, face, pyracanny, cpds, depth; weight 0-2, '
    "stop_at 0-1",
}

_NORMALISERS: dict[str, Callable[[str], str]] = {
    "aspect": normalise_aspect,
    "performance": normalise_performance,
    "image_action": normalise_image_action,
    "output_format": normalise_output_format,
}
_EXPECTED: dict[str, str] = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text (in quotes)",
    "list_type": "a list",
}
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def canonical_key(raw: str) -> str:
    """``Disable-Seed Increment`` → ``disable_seed_increment``; an alias (``format``) → its field."""
    key = re.sub(r"[\s\-]+", "_", raw.strip().lower())
    return KEY_ALIASES.get(key, key)


def normalise_value(field: str, value: Any) -> Any:
    """Turn user spellings into canonical values. Raises ``ValueError`` with a reason."""
    if field == "seed" and (value == -1 or str(value).strip().lower() in RANDOM_SEED_WORDS):
        return None
    if field == "model" and str(value).strip().lower() == "default":
        return None  # the preset's or the configured model, over one that pasted settings name
    if field == "styles" and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if field == "notes" and isinstance(value, str):
        return [value]
    if field == "loras":
        return lora_entries(value)
    if field == "image_prompts":
        return image_prompt_entries(value)
    if field == "outpaint":
        return _outpaint_directions(value)
    if field in _NORMALISERS and isinstance(value, str):
        return _NORMALISERS[field](value)
    return value


def lora_entries(value: Any) -> Any:
    """``"x:0.8, y"``, ``["x:0.8", "y"]``, ``[{name = "x", weight = 0.8}]`` or Fooocus's own
    ``[["x", 0.8]]`` / ``[[true, "x", 0.8]]`` → a list of LoRA tables.

    A bare name has weight 1.0. The weight follows the last colon, so ``C:/loras/x.safetensors:0.5``
    still works; text after a last colon that is not a number belongs to the name.
    """
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        return value  # let validation report the wrong type
    entries = [_lora_item(item) for item in value]
    return [entry for entry in entries if entry is not None]


def _lora_item(item: Any) -> Any:
    if isinstance(item, str):
        return _lora_entry(item)
    if isinstance(item, list):
        return _fooocus_lora_row(item)
    return _api_lora_table(item)


FOOOCUS_EMPTY_LORA = "None"
"""The name Fooocus's presets give an unused LoRA slot."""


def _fooocus_lora_row(item: list[Any]) -> Any:
    """Fooocus's preset rows: ``[name, weight]``, or ``[enabled, name, weight]`` in newer ones. A
    disabled row or an empty slot is dropped; any other shape is returned for validation to judge."""
    row = list(item)
    enabled = row.pop(0) if len(row) == 3 and isinstance(row[0], bool) else True
    if len(row) != 2 or not isinstance(row[0], str) or isinstance(row[1], bool):
        return item
    name, weight = row
    if enabled is False or name.strip() == FOOOCUS_EMPTY_LORA:
        return None
    return {"name": name, "weight": weight}


def _api_lora_table(item: Any) -> Any:
    """Fooocus-API's ``{enabled, model_name, weight}``: a disabled slot is dropped, ``model_name``
    is the name. Anything else is returned as it is, for validation to judge."""
    if not isinstance(item, dict):
        return item
    table = dict(item)
    if table.pop("enabled", True) is False:
        return None
    if "model_name" in table and "name" not in table:
        table["name"] = table.pop("model_name")
    return table


def _lora_entry(text: str) -> dict[str, Any]:
    name, colon, weight = text.strip().rpartition(":")
    if colon and name:
        try:
            return {"name": name.strip(), "weight": float(weight)}
        except ValueError:
            pass
    return {"name": text.strip(), "weight": 1.0}


IMAGE_PROMPT_TYPE_WORDS: dict[str, str] = {
    "imageprompt": "image_prompt",
    "ip": "image_prompt",
    "face": "face",
    "faceswap": "face",
    "pyracanny": "pyracanny",
    "canny": "pyracanny",
    "cpds": "cpds",
    "depth": "depth",
}
_LAST_WORD = re.compile(r"^(.*\S)\s+(\S+)$")


def image_prompt_entries(value: Any) -> Any:
    """Image prompt slots as tables. A text entry reads ``path [type] [weight [stop_at]]``
    (``"refs/pose.png pyracanny 0.6 0.5"``); a text value may hold several entries, one per line.
    Type spellings are loose: ``PyraCanny``, ``Image Prompt``, ``FaceSwap``, ``canny``."""
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, list):
        return value  # let validation report the wrong type
    entries = []
    for item in value:
        if isinstance(item, str):
            item = _image_prompt_entry(item)
        elif isinstance(item, dict) and isinstance(item.get("type"), str):
            item = {**item, "type": _image_prompt_type(item["type"]) or item["type"]}
        entries.append(item)
    return entries


def _image_prompt_type(word: str) -> str | None:
    return IMAGE_PROMPT_TYPE_WORDS.get(re.sub(r"[\s_\-]+", "", word.lower()))


def _image_prompt_entry(text: str) -> dict[str, Any]:
    rest = text.strip()
    numbers: list[float] = []
    kind: str | None = None
    while (match := _LAST_WORD.match(rest)) is not None:
        head, last = match.groups()
        try:
            number = float(last)
        except ValueError:
            number = None
        if number is not None and kind is None and len(numbers) < 2:
            numbers.insert(0, number)
        elif kind is None and _image_prompt_type(last) is not None:
            kind = _image_prompt_type(last)
        else:
            break
        rest = head
    entry: dict[str, Any] = {"image": rest}
    if kind is not None:
        entry["type"] = kind
    for name, number in zip(("weight", "stop_at"), numbers, strict=False):
        entry[name] = number
    return entry


def _outpaint_directions(value: Any) -> Any:
    """``"left, right"``, ``"Left Right"`` or ``["left", "right"]`` → ``["left", "right"]`` (no repeats)."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list):
        return value  # let validation report the wrong type
    directions = [part.strip().lower() if isinstance(part, str) else part for part in value]
    return list(dict.fromkeys(directions))


def build_spec(
    fields: Mapping[str, Any],
    locate: Callable[[str], str],
    *,
    whole: str,
    source_name: str,
    written: Mapping[str, str] | None = None,
) -> JobSpec:
    """Validate ``fields`` as a JobSpec; any problem becomes ``InvalidInput`` pointing at its key.

    ``locate(field)`` says where a field was written (e.g. "line 4"); ``whole`` names the job
    for problems that belong to no single key (e.g. a job without a prompt); ``written`` maps a
    field to the key as the user spelled it (e.g. output_format → format), for messages.
    """
    labels = dict(written or {})
    if any(key in fields for key in SIZE_KEYS):
        fields = size_as_aspect(fields, locate, source_name)
        labels["aspect"] = "width*height"
        locate = _aspect_at_width(locate)
    values: dict[str, Any] = {}
    for field, raw in fields.items():
        try:
            value = normalise_value(field, raw)
        except ValueError as exc:
            raise InvalidInput(
                f"{source_name}: '{labels.get(field, field)}' = {shown_value(raw)} is not valid: {exc}",
                where=locate(field),
                hint=KEY_HELP.get(field, ""),
            ) from exc
        if value is not None:  # only a random seed normalises to None: leave the field unset
            values[field] = value
    try:
        return JobSpec(**values)
    except ValidationError as exc:
        raise _explain(exc, locate, labels, whole=whole, source_name=source_name) from exc


def size_as_aspect(
    fields: Mapping[str, Any], locate: Callable[[str], str], source_name: str
) -> dict[str, Any]:
    """``width`` and ``height`` (A1111's and diffusers' keys) → ``aspect = "<width>*<height>"``."""
    given = [key for key in SIZE_KEYS if key in fields]
    if len(given) == 1:
        missing = next(key for key in SIZE_KEYS if key not in fields)
        raise InvalidInput(
            f"{source_name}: '{given[0]}' is set but '{missing}' is not",
            where=locate(given[0]),
            hint="give both width and height (e.g. 1152 and 896), or an aspect instead (e.g. 16:9)",
        )
    if "aspect" in fields:
        raise InvalidInput(
            f"{source_name}: both 'aspect' and width and height set the size",
            where=locate("width"),
            hint="keep either width and height, or aspect",
        )
    rest = {key: value for key, value in fields.items() if key not in SIZE_KEYS}
    rest["aspect"] = f"{str(fields['width']).strip()}*{str(fields['height']).strip()}"
    return rest


def _aspect_at_width(locate: Callable[[str], str]) -> Callable[[str], str]:
    """``locate`` for a job whose aspect came from its width and height: point at the width."""

    def located(field: str) -> str:
        return locate("width" if field == "aspect" else field)

    return located


def _explain(
    exc: ValidationError,
    locate: Callable[[str], str],
    labels: Mapping[str, str],
    *,
    whole: str,
    source_name: str,
) -> InvalidInput:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not field:
        return InvalidInput(
            f"{source_name}: {reason}",
            where=whole,
            hint='add a prompt (for a .txt file: a line of text; for .toml: prompt = "...")',
        )
    expected = _EXPECTED.get(str(error["type"]))
    detail = f"expected {expected}" if expected else reason
    got = error.get("input")
    more = len(exc.errors()) - 1
    extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    hint = KEY_HELP.get(field, "see the job-file keys in the README")
    if error["type"] in ("string_too_long", "too_long"):
        limit = (error.get("ctx") or {}).get("max_length")
        unit = "characters" if error["type"] == "string_too_long" else "entries"
        hint = f"shorten it to at most {limit:,} {unit}" if isinstance(limit, int) else hint
    return InvalidInput(
        f"{source_name}: '{labels.get(field, field)}' = {shown_value(got)} is not valid: {detail}{extra}",
        where=locate(field),
        hint=hint,
    )


def parse_toml(text: str, source_name: str) -> list[JobSpec]:
    """Parse a ``.toml`` job file into job specs. Raises ``InvalidInput`` naming the key or position."""
    try:
        document = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.search(str(exc))
        where = f"line {position.group(1)}, column {position.group(2)}" if position else ""
        reason = _TOML_POSITION.sub("", str(exc)).strip()
        raise InvalidInput(
            f"{source_name} is not valid TOML: {reason}",
            where=where,
            hint='fix the syntax there; text values need quotes, e.g. prompt = "a red fox"',
        ) from exc
    return specs_from_document(document, source_name, TOML_JOBS)


@dataclass(frozen=True)
class JobListSyntax:
    """How a format writes several jobs, for ``specs_from_document`` and its messages."""

    key: str
    """The top-level key that holds the list of jobs."""
    label: str
    """One job, as a user finds it in the file: ``[[job]]``."""
    not_a_list: str
    empty: str


TOML_JOBS = JobListSyntax(
    key="job",
    label="[[job]]",
    not_a_list="start each job with a [[job]] line (double brackets)",
    empty="add at least one [[job]] table",
)


def specs_from_document(document: dict[str, Any], source_name: str, syntax: JobListSyntax) -> list[JobSpec]:
    """A decoded job file: one job (every key at the top level), or a list of jobs under
    ``syntax.key`` that share the keys beside it as defaults each job may override."""
    document = dict(document)
    jobs = document.pop(syntax.key, None)
    shared = _canonical_table(document, "top level", source_name, syntax.key)
    if jobs is None:
        fields = _split_prompt_lines(shared)
        return [build_spec(fields, lambda field: f"key '{field}'", whole="the file", source_name=source_name)]
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise InvalidInput(
            f"{source_name}: '{syntax.key}' must be a list of tables",
            where=f"key '{syntax.key}'",
            hint=syntax.not_a_list,
        )
    if not jobs:
        raise InvalidInput(f"{source_name} has no jobs", where=f"key '{syntax.key}'", hint=syntax.empty)
    specs = []
    for number, job in enumerate(jobs, start=1):
        label = f"{syntax.label} #{number}"
        own = _canonical_table(job, label, source_name, syntax.key)

        def locate(field: str, own: dict[str, Any] = own, label: str = label) -> str:
            if field in own:
                return f"{label}, key '{field}'"
            return f"top-level key '{field}' (shared by every {syntax.label})"

        merged = _split_prompt_lines({**_not_overridden(shared, own), **own})
        specs.append(build_spec(merged, locate, whole=label, source_name=source_name))
    return specs


def _canonical_table(table: dict[str, Any], label: str, source_name: str, jobs_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for raw_key, value in table.items():
        key = canonical_key(raw_key)
        if key not in JOB_FIELDS and key not in SIZE_KEYS:
            unknown.append(raw_key)
            continue
        if key in out:
            raise InvalidInput(
                f"{source_name}: key '{raw_key}' sets '{key}' a second time in {label}",
                where=f"{label}, key '{raw_key}'",
                hint="keep only one of them",
            )
        out[key] = value
    if unknown:
        first = unknown[0]
        names = ", ".join(f"'{name}'" for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        known = [*JOB_FIELDS, "format", "action", *([jobs_key] if label == "top level" else [])]
        raise InvalidInput(
            f"{source_name}: unknown key{plural} {names} in {label}{suggest(canonical_key(first), known)}",
            where=f"{label}, key '{first}'",
            hint="known keys: " + ", ".join(JOB_FIELDS) + " (plus the aliases format, action)",
        )
    return out


def _not_overridden(shared: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The shared defaults a [[job]] keeps: its own aspect replaces shared width and height, and
    its own width or height replaces a shared aspect."""
    if "aspect" in own:
        return {key: value for key, value in shared.items() if key not in SIZE_KEYS}
    if any(key in own for key in SIZE_KEYS):
        return {key: value for key, value in shared.items() if key != "aspect"}
    return shared


def _split_prompt_lines(fields: dict[str, Any]) -> dict[str, Any]:
    # As in Fooocus, a multi-line prompt is one main line plus extra prompts, one per line.
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or "\n" not in prompt.strip():
        return fields
    lines = [line.strip() for line in prompt.strip().splitlines() if line.strip()]
    extras = fields.get("extra_prompts", [])
    if not isinstance(extras, list):
        return fields  # let validation report the wrong type
    return {**fields, "prompt": lines[0], "extra_prompts": [*lines[1:], *extras]}
