"""Generation settings pasted into a ``.txt`` job: the way people share a picture's recipe.

Two forms are read, as Fooocus's "Load Parameters" and A1111's "PNG Info" read them:

* **A1111 generation data**, as civitai.com and A1111's PNG Info show it: the prompt, a
  ``Negative prompt:`` line, then one ``Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1,
  Size: 832x1216, Model: …`` line.
* **Fooocus's parameters JSON**, from the "Copy to Clipboard" button of Fooocus's image log
  (``{"prompt": …, "base_model": …, "steps": …}``), or a fooocusd sidecar's JSON.

They become the job's settings through the same translation ``fooocusd inspect --job`` uses
(``outbox/remake.py``), so a pasted A1111 recipe runs without Fooocus's refinements, as A1111 made
it, and a sampler fooocusd lacks falls back to the default, saying so. Option lines
(``images: 4``, ``model: my.safetensors``) may follow the pasted text and win over it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fooocusd.engine.styles import PSEUDO_STYLES, StyleLibrary, load_styles, style_key
from fooocusd.errors import InvalidInput

_SETTINGS_LINE_MIN_PAIRS = 3
_SETTINGS_LINE_START = "Steps:"
"""How A1111, civitai and Fooocus begin the settings line."""
_FOOOCUS_KEYS = frozenset(
    {"base_model", "steps", "resolution", "seed", "performance", "sampler", "scheduler", "guidance_scale"}
)
_FOOOCUS_MIN_KEYS = 2
# A1111 keys that only describe the picture (hashes, versions): nothing to do with them.
_A1111_INFORMATION = frozenset(
    {
        "Model hash",
        "VAE hash",
        "Lora hashes",
        "TI hashes",
        "Hashes",
        "Version",
        "Refiner hash",
        "Emphasis",
        "Schedule max sigma",
        "Schedule min sigma",
        "Schedule rho",
        "RNG",
        "Module 1",
        "User",
        "Metadata Scheme",
        "Created Date",
        "Civitai resources",
        "Civitai metadata",
    }
)
# A1111 keys ``from_a1111`` turns into job settings.
_A1111_USED = frozenset(
    {
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Model",
        "Clip skip",
        "Sharpness",
        "ADM Guidance",
        "Adaptive CFG",
        "Performance",
        "Styles",
        "Raw prompt",
        "Raw negative prompt",
        "Fooocus V2 Expansion",
        "Lora weights",
        "Refiner",
        "Refiner switch",
        "VAE",
        "Scheduler",
    }
)


@dataclass
class PastedSettings:
    kind: str
    """"A1111 generation data", "Fooocus parameters" or "fooocusd sidecar"."""
    fields: dict[str, Any]
    """JobSpec fields, as a TOML job file would give them."""
    line_count: int
    """How many lines of the file the pasted text takes; option lines may follow."""
    notes: list[str] = field(default_factory=list)
    """What is not carried over, and why."""


def pasted_settings(lines: Sequence[str], source_name: str) -> PastedSettings | None:
    """The settings pasted at the start of a ``.txt`` job's ``lines``, or None when it is an
    ordinary job file. ``InvalidInput`` when a pasted value cannot be read (``Seed: abc``)."""
    try:
        return _fooocus_parameters(lines) or _a1111_generation_data(lines)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        quoted = re.search(r"'([^']*)'$", str(exc)) if isinstance(exc, ValueError) else None
        what = f"{quoted.group(1)!r} is not a number" if quoted else str(exc)
        raise InvalidInput(
            f"{source_name}: the pasted generation settings have a value fooocusd cannot read: {what}",
            where="the pasted settings",
            hint="correct that value, or delete it from the settings line and write it as an option "
            "line after the settings ('steps: 30')",
        ) from exc


def _fooocus_parameters(lines: Sequence[str]) -> PastedSettings | None:
    text = "\n".join(lines)
    start = len(text) - len(text.lstrip())
    if not text[start:].startswith("{"):
        return None
    try:
        scheme, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None
    if (
        not isinstance(scheme, dict)
        or "prompt" not in scheme
        or len(_FOOOCUS_KEYS & set(scheme)) < _FOOOCUS_MIN_KEYS
    ):
        return None
    from fooocusd.outbox.remake import from_fooocus_scheme, from_sidecar, keep_runnable_sampling

    if "schema" in scheme and "input_file" in scheme:  # fooocusd's own sidecar
        image = from_sidecar(Path("pasted"), scheme, known_bundled_style)
        kind = "fooocusd sidecar"
    else:
        image = from_fooocus_scheme(Path("pasted"), scheme, known_bundled_style)
        kind = "Fooocus parameters"
    keep_runnable_sampling(image.job, image.notes)
    styles = image.job.get("styles") or []
    unknown = [name for name in styles if not known_bundled_style(name)]
    if unknown:
        image.job["styles"] = [name for name in styles if name not in unknown]
        image.notes = [note for note in image.notes if not note.startswith("style(s)")]
        image.notes.append(f"style(s) {', '.join(unknown)} have no fooocusd equivalent: left out")
    return PastedSettings(kind, image.job, text[:end].count("\n") + 1, image.notes)


def _a1111_generation_data(lines: Sequence[str]) -> PastedSettings | None:
    from fooocusd.outbox.reader import parse_settings_line
    from fooocusd.outbox.remake import from_a1111, keep_runnable_sampling

    found = next(
        (
            (index, params)
            for index, line in enumerate(lines)
            if line.strip().startswith(_SETTINGS_LINE_START)
            and len(params := parse_settings_line(line.strip())) >= _SETTINGS_LINE_MIN_PAIRS
        ),
        None,
    )
    if found is None:
        return None
    index, params = found
    image = from_a1111(Path("pasted"), "\n".join(lines[: index + 1]))
    keep_runnable_sampling(image.job, image.notes)
    ignored = [key for key in params if key not in _A1111_USED and key not in _A1111_INFORMATION]
    if ignored:
        image.notes.append(f"{', '.join(ignored)}: fooocusd has no equivalent, so these are not used")
    return PastedSettings("A1111 generation data", image.job, index + 1, image.notes)


@functools.cache
def _bundled_styles() -> StyleLibrary:
    return load_styles()


def known_bundled_style(name: str) -> bool:
    """Whether fooocusd has the style (by name or Fooocus alias). User styles are not looked at:
    the job file parser does not know the configured folder."""
    return name in _bundled_styles() or style_key(name) in {style_key(pseudo) for pseudo in PSEUDO_STYLES}
