"""The prompt a picture carries, for an image job that gives none.

An image dropped without a job file, or with one that has no prompt, is varied, upscaled or
repainted. Without a prompt the result drifts towards whatever the model draws unprompted; with
the prompt that made the picture it stays on its subject, as it does in Fooocus, where the prompt
box still holds it. Images made by fooocusd, Fooocus (with "Save Metadata to Images") or A1111,
and most images from civitai, carry their prompt; it is read through the same translation as
``fooocusd inspect --job`` (``outbox/remake.py``).

Only the prompts and styles are taken: the picture is redrawn with this installation's model, at
a new seed. Pictures made elsewhere (Fooocus, A1111) lose their ``<lora:…>`` tags and
``embedding:`` references, which name files of another installation; fooocusd's own keep them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from fooocusd.engine.prompt_syntax import EMBEDDING_REFERENCE, parse_inline_loras, tidy_prompt
from fooocusd.errors import InvalidInput
from fooocusd.jobs.pasted_settings import known_bundled_style
from fooocusd.jobs.spec import JobSpec

PROMPT_FIELDS = ("prompt", "extra_prompts", "negative", "styles")
_WEIGHTED_EMBEDDING = re.compile(
    r"\(\s*" + EMBEDDING_REFERENCE.pattern + r"(?::[+-]?[\d.]+)?\s*\)", re.IGNORECASE
)


def recorded_prompt(image: Path) -> dict[str, Any]:
    """The JobSpec prompt fields (``PROMPT_FIELDS``) recorded in ``image``; empty when it records
    no prompt, or its record cannot be read."""
    from fooocusd.outbox.reader import parse_a1111_parameters, read_embedded_metadata
    from fooocusd.outbox.remake import from_a1111, from_fooocus_scheme

    try:
        embedded = read_embedded_metadata(image)
        scheme, parameters = embedded["fooocus_scheme"], embedded["parameters"]
        if scheme is not None and "prompt" in scheme:
            record = from_fooocus_scheme(image, scheme, known_bundled_style)
        elif parameters and parse_a1111_parameters(parameters)["params"]:  # a settings line: A1111's
            record = from_a1111(image, parameters)
        else:
            return {}
    except (InvalidInput, OSError, KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        logger.debug(
            "{}: its recorded settings are not readable ({}); no prompt taken from it", image.name, exc
        )
        return {}
    fields = {name: record.job[name] for name in PROMPT_FIELDS if record.job.get(name)}
    if "styles" in fields:  # a style this installation lacks would get the picture refused
        fields["styles"] = [name for name in fields["styles"] if known_bundled_style(name)]
    if record.origin != "fooocusd":
        fields = _without_other_installations_files(fields)
    if not str(fields.get("prompt", "")).strip():
        return {}
    try:
        JobSpec.model_validate(fields)
    except ValidationError as exc:  # too long, too many lines: the picture is redrawn without it
        logger.debug("{}: its recorded prompt is not usable ({})", image.name, exc.errors()[0]["msg"])
        return {}
    return fields


def _without_other_installations_files(fields: dict[str, Any]) -> dict[str, Any]:
    def clean(text: str) -> str:
        text = parse_inline_loras(text)[0]
        return tidy_prompt(EMBEDDING_REFERENCE.sub("", _WEIGHTED_EMBEDDING.sub("", text)))

    cleaned = dict(fields)
    for name in ("prompt", "negative"):
        if name in cleaned:
            cleaned[name] = clean(cleaned[name])
    if "extra_prompts" in cleaned:
        cleaned["extra_prompts"] = [text for text in map(clean, cleaned["extra_prompts"]) if text]
    return {name: value for name, value in cleaned.items() if value}
