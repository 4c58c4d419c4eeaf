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

A ``/`` written in the template makes folders inside the output folder
(``{date}/{stem}_{seed}_{index}`` puts each day's images in a folder of their own); a ``/`` or
``\\`` in a field's value never does: it becomes ``-`` (a prompt such as ``AC/DC poster``). Each
part of a name loses the characters Windows and Android cannot store (``<>:"|?*`` and control
characters) and is capped at 150 UTF-8 bytes. A file name never starts with a dot (refused: the
file would be hidden and ignored by sync tools); a folder name loses its leading dots, and a folder
whose name comes out empty is left out.
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
        # A prompt's leading dots or dashes would make a hidden file or one a shell takes for an option.
        "prompt": _without_separators(" ".join(prompt.split())[:PROMPT_FIELD_CHARS]).lstrip(".- "),
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
    if "\\" in literal_text:
        raise ConfigError(
            f"output name template {template!r} contains a backslash (a path separator)",
            hint="use '/' to put images in folders ({date}/{stem}_{seed}_{index}), or '_' or '-'",
            where=_TEMPLATE_KEY,
        )
    for part in _template_parts(template):
        _check_template_part(template, part)
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


def _check_template_part(template: str, part: str) -> None:
    """A part between two '/' of the template: it must name something inside the outbox."""
    hint = "folders go inside the output folder: write them as {date}/{stem}_{seed}_{index}"
    if not part.strip(" "):
        raise ConfigError(
            f"output name template {template!r} has an empty folder or file name (a leading, "
            "trailing or doubled path separator)",
            hint=hint,
            where=_TEMPLATE_KEY,
        )
    if part.startswith("."):
        raise ConfigError(
            f"output name template {template!r} has a part that starts with a dot ({part!r}): "
            "a hidden file or folder that sync tools skip, or one that leaves the outbox",
            hint=hint,
            where=_TEMPLATE_KEY,
        )


def render_name(template: str, fields: Mapping[str, Any]) -> str:
    """Render ``template`` into a safe name (without extension), relative to the output folder.

    The result is the file name, after the folders the template's ``/`` make, joined by ``/``
    (``2025-01-31/cat_1_0``). Raises ``ConfigError`` for unknown fields and ``InvalidInput``
    when this job's values would produce an empty file name or a hidden dotfile.
    """
    used = template_fields(template)
    missing = [field for field in used if field not in fields]
    if missing:
        raise ConfigError(
            f"no value for output name field(s) {', '.join(missing)}",
            hint="this is a bug in the caller of render_name; please report it",
            where=_TEMPLATE_KEY,
        )
    values = {field: _without_separators(fields[field]) for field in used}
    *folder_parts, file_part = _template_parts(template)
    folders = [_render_folder(part, values) for part in folder_parts]
    return "/".join([*(folder for folder in folders if folder), _render_file_name(file_part, values)])


def _template_parts(template: str) -> list[str]:
    """The template cut at its literal '/' (never at one inside a field), each a template itself."""
    parts = [""]
    for literal, field, spec, _conversion in string.Formatter().parse(template):
        pieces = literal.replace("{", "{{").replace("}", "}}").split("/")
        parts[-1] += pieces[0]
        parts.extend(pieces[1:])
        if field is not None:
            parts[-1] += "{" + field + (f":{spec}" if spec else "") + "}"
    return parts


def _without_separators(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("/", "-").replace("\\", "-")
    return value


def _render_folder(template: str, values: Mapping[str, Any]) -> str:
    name = _cut_bytes(_sanitise(template.format_map(values)), MAX_NAME_BYTES)
    name = _tidy_ends(name.lstrip(". "))
    return f"_{name}" if _WINDOWS_RESERVED.match(name) else name


def _render_file_name(template: str, values: dict[str, Any]) -> str:
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
    if any(separator in rendered for separator in _SEPARATORS):  # only a format spec's fill can do this
        raise InvalidInput(
            f"output name {rendered!r} contains a path separator",
            hint="use '/' only between fields of outbox.name_template, never in a format spec",
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
