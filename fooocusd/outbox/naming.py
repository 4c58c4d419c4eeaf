"""Output file names: render the user's template safely, then find a name nothing else uses.

Template fields (``outbox.name_template``; Python format specs such as ``{index:03d}`` work):

==============  =============================================================  ===================
field           meaning                                                        example
==============  =============================================================  ===================
``stem``        input file name without extension (or the job's ``name``)     ``cat``
``seed``        seed of this image                                             ``1234567890``
``index``       position of the image within its job, from 0                   ``0``
``number``      position of the image within its job, from 1                   ``1``
``count``       how many images the job makes                                  ``4``
``job``         first 8 characters of the job id                               ``0f3a9c12``
``date``        local date the image was finished, YYYY-MM-DD                  ``2025-01-31``
``time``        local time the image was finished, HH-MM-SS                    ``14-03-59``
``width``       image width in pixels                                          ``1152``
``height``      image height in pixels                                         ``896``
``model``       checkpoint name without extension                              ``juggernautXL_v8``
``performance`` performance mode                                               ``speed``
``prompt``      first 40 characters of the prompt                              ``a cat on a sofa``
==============  =============================================================  ===================

Rendered names never contain a path separator (refused), never start with a dot (refused:
the file would be hidden and ignored by sync tools), lose the characters Windows and Android
cannot store (``<>:"|?*`` and control characters), and are capped at 150 UTF-8 bytes.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fooocusd.errors import ConfigError, InvalidInput, TransientError
from fooocusd.outbox.folder_names import FolderNames, list_casefolded

TEMPLATE_FIELDS: dict[str, str] = {
    "stem": "input file name without extension (or the job's name)",
    "seed": "seed of this image",
    "index": "position of the image within its job, from 0",
    "number": "position of the image within its job, from 1",
    "count": "how many images the job makes",
    "job": "first 8 characters of the job id",
    "date": "local date, YYYY-MM-DD",
    "time": "local time, HH-MM-SS",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "model": "checkpoint name without extension",
    "performance": "performance mode",
    "prompt": "first 40 characters of the prompt",
}

MAX_NAME_BYTES = 150
PROMPT_FIELD_CHARS = 40
SIDECAR_SUFFIX = ".json"
MAX_NAME_ATTEMPTS = 100_000

# Fields that hold free text; when a name is too long these are shortened first so that the
# seed and index (which tell images apart) survive.
_FREE_TEXT_FIELDS = ("prompt", "stem", "model")
_SEPARATORS = ("/", "\\")
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?$", re.IGNORECASE)
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")

_SAMPLE_FIELDS: dict[str, Any] = {
    "stem": "example",
    "seed": 1234567890,
    "index": 0,
    "number": 1,
    "count": 1,
    "job": "0f3a9c12",
    "date": "2025-01-31",
    "time": "14-03-59",
    "width": 1152,
    "height": 896,
    "model": "model",
    "performance": "speed",
    "prompt": "a prompt",
}
_TEMPLATE_KEY = "outbox.name_template"


def model_stem(model_name: str) -> str:
    """``juggernautXL_v8.safetensors`` → ``juggernautXL_v8``; a folder name stays as it is."""
    name = Path(model_name).name
    for extension in _MODEL_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def name_fields(
    *,
    stem: str,
    seed: int,
    index: int,
    count: int,
    job_id: str | int,
    finished: datetime,
    width: int,
    height: int,
    model: str,
    performance: str,
    prompt: str,
) -> dict[str, Any]:
    """Every template field for one image. ``finished`` is formatted as given (pass local time)."""
    return {
        "stem": stem,
        "seed": seed,
        "index": index,
        "number": index + 1,
        "count": count,
        "job": str(job_id).replace("-", "")[:8],
        "date": finished.strftime("%Y-%m-%d"),
        "time": finished.strftime("%H-%M-%S"),
        "width": width,
        "height": height,
        "model": model_stem(model),
        "performance": performance,
        "prompt": " ".join(prompt.split())[:PROMPT_FIELD_CHARS],
    }


def template_fields(template: str) -> list[str]:
    """The field names a template uses. Raises ``ConfigError`` for unknown or malformed fields."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"output name template {template!r} is malformed: {exc}",
            hint="fields look like {stem} or {index:03d}; write a literal brace as {{ or }}",
            where=_TEMPLATE_KEY,
        ) from exc
    used: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS:
            raise ConfigError(
                f"output name template {template!r} uses unknown field {{{field}}}",
                hint=f"valid fields: {', '.join(TEMPLATE_FIELDS)}",
                where=_TEMPLATE_KEY,
            )
        if conversion or (spec and ("{" in spec or "}" in spec)):
            raise ConfigError(
                f"output name template {template!r}: field {{{field}}} may only take a plain "
                "format spec such as {index:03d}",
                where=_TEMPLATE_KEY,
            )
        used.append(field)
    return used


def validate_template(template: str) -> None:
    """Check a template at start-up so that a bad one stops the daemon, not every job."""
    if not template.strip():
        raise ConfigError(
            "output name template is empty", hint="e.g. {stem}_{seed}_{index}", where=_TEMPLATE_KEY
        )
    template_fields(template)
    literal_text = "".join(literal for literal, *_ in string.Formatter().parse(template))
    if any(separator in literal_text for separator in _SEPARATORS):
        raise ConfigError(
            f"output name template {template!r} contains a path separator",
            hint="names are files directly in the outbox; use '_' or '-' instead of '/' or '\\'",
            where=_TEMPLATE_KEY,
        )
    try:
        render_name(template, _SAMPLE_FIELDS)
    except InvalidInput as exc:
        raise ConfigError(
            f"output name template {template!r} is unusable: {exc.message}",
            hint=exc.hint,
            where=_TEMPLATE_KEY,
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"output name template {template!r} has a format spec that does not fit its field: {exc}",
            hint="numbers take specs like {seed:d} or {index:03d}; text fields take none",
            where=_TEMPLATE_KEY,
        ) from exc


def render_name(template: str, fields: Mapping[str, Any]) -> str:
    """Render ``template`` into a safe file name (without extension).

    Raises ``ConfigError`` for unknown fields and ``InvalidInput`` when this job's values would
    produce a path (``/``, ``\\``), an empty name or a hidden dotfile.
    """
    used = template_fields(template)
    missing = [field for field in used if field not in fields]
    if missing:
        raise ConfigError(
            f"no value for output name field(s) {', '.join(missing)}",
            hint="this is a bug in the caller of render_name; please report it",
            where=_TEMPLATE_KEY,
        )
    values = {field: fields[field] for field in used}
    name = _sanitise(template.format_map(values))
    overflow = len(name.encode("utf-8")) - MAX_NAME_BYTES
    for field in _FREE_TEXT_FIELDS:
        if overflow <= 0:
            break
        if field in values and isinstance(values[field], str) and values[field]:
            values[field] = _cut_bytes(values[field], len(values[field].encode("utf-8")) - overflow)
            name = _sanitise(template.format_map(values))
            overflow = len(name.encode("utf-8")) - MAX_NAME_BYTES
    name = _tidy_ends(_cut_bytes(name, MAX_NAME_BYTES))
    if not name:
        raise InvalidInput(
            f"output name template {template!r} gives an empty file name for this job",
            hint="give the job a 'name', or use a template with {seed} or {job}",
            where=_TEMPLATE_KEY,
        )
    if name.startswith("."):
        raise InvalidInput(
            f"output name {name!r} would start with a dot (a hidden file that sync tools skip)",
            hint="rename the input or set the job's 'name' so that it does not start with '.'",
            where=_TEMPLATE_KEY,
        )
    if _WINDOWS_RESERVED.match(name):
        name = f"_{name}"
    return name


def _sanitise(rendered: str) -> str:
    if any(separator in rendered for separator in _SEPARATORS):
        raise InvalidInput(
            f"output name {rendered!r} contains a path separator and could leave the outbox",
            hint="rename the input (or the job's 'name') without '/' or '\\'",
            where=_TEMPLATE_KEY,
        )
    text = unicodedata.normalize("NFC", rendered)
    return _tidy_ends(_UNSAFE_CHARS.sub("", text))


def _tidy_ends(name: str) -> str:
    # Windows drops trailing dots and spaces; leading spaces confuse every shell.
    return name.strip(" ").rstrip(". ")


def _cut_bytes(text: str, limit: int) -> str:
    if limit <= 0:
        return ""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def sidecar_path_for(image_path: Path) -> Path:
    """``outbox/cat_1_0.png`` → ``outbox/cat_1_0.json`` (written last: it marks completion)."""
    return image_path.with_suffix(SIDECAR_SUFFIX)


def choose_free_name(
    folder: Path,
    base: str,
    ext: str,
    taken: Callable[[Path], bool] = lambda _path: False,
    names: FolderNames | None = None,
) -> Path:
    """First of ``base.ext``, ``base-1.ext``, ``base-2.ext``… that is free.

    A name is taken when ``taken(path)`` says so (e.g. reserved in the journal), or when the
    image or its ``.json`` sidecar exists, compared case-insensitively so that names stay
    distinct on Windows and macOS sync targets. ``names`` keeps the folder's listing between
    calls and takes the chosen name into it (``folder_names.py``); without it the folder is listed
    each time.
    """
    suffix = ext if ext.startswith(".") else f".{ext}"
    existing = names.existing(folder) if names is not None else list_casefolded(folder)
    for attempt in range(MAX_NAME_ATTEMPTS):
        candidate_base = base if attempt == 0 else f"{base}-{attempt}"
        candidate = folder / f"{candidate_base}{suffix}"
        sidecar = sidecar_path_for(candidate)
        if candidate.name.casefold() in existing or sidecar.name.casefold() in existing:
            continue
        if candidate.exists() or sidecar.exists():  # a kept listing may predate them
            continue
        if taken(candidate):
            continue
        if names is not None:
            names.add(folder, candidate.name, sidecar.name)
        return candidate
    raise TransientError(
        f"no free output name for {base}{suffix} in {folder} after {MAX_NAME_ATTEMPTS} tries",
        hint="tidy up the outbox, or add {date}_{time} or {job} to outbox.name_template",
        where=str(folder),
    )
