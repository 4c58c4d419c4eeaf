"""Presets: named sets of generation defaults, kept as ``<name>.toml`` data files.

Search directories are given in priority order; the first one holding ``<name>.toml`` wins, so
a user's preset folder placed before the bundled one overrides a bundled preset of the same name.
A broken preset file is a ``ConfigError`` (the operator's file); a job asking for a preset that
does not exist is ``InvalidInput`` (the job's fault).

Models: a preset may name its checkpoint (``model``), ``refiner``, ``vae`` and ``loras`` by file
name. A job that uses the preset (by its own ``preset`` key, its inbox subfolder or
``generation.preset``) gets those files unless it names its own; the bundled ``default`` preset
names none, so ``engine.model`` stays in charge. ``preset_check.check_preset_models`` makes sure
the files exist before anything renders.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import fooocusd
from fooocusd.errors import ConfigError, InvalidInput, shown_value, suggest
from fooocusd.jobs.resolve import (
    normalise_aspect,
    normalise_output_format,
    normalise_performance,
)
from fooocusd.jobs.spec import MAX_IMAGES, MAX_LORAS, LoraSpec, OutputFormat, Performance
from fooocusd.jobs.toml_format import canonical_key, lora_entries
from fooocusd.name_spelling import comparable
from fooocusd.settings import GenerationSettings

PRESET_SUFFIX = ".toml"


class Preset(BaseModel):
    """Defaults for a subset of job fields; ``None`` means "not set by this preset"."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    name: str
    path: Path | None = None
    description: str = ""
    model: str | None = Field(None, max_length=500)
    negative: str | None = Field(None, max_length=20_000)
    styles: list[str] | None = None
    aspect: str | None = None
    performance: Performance | None = None
    cfg: float | None = Field(None, ge=1.0, le=30.0)
    sharpness: float | None = Field(None, ge=0.0, le=30.0)
    adaptive_cfg: float | None = Field(None, ge=1.0, le=30.0)
    adm_scaler_positive: float | None = Field(None, ge=0.1, le=3.0)
    adm_scaler_negative: float | None = Field(None, ge=0.1, le=3.0)
    adm_scaler_end: float | None = Field(None, ge=0.0, le=1.0)
    clip_skip: int | None = Field(None, ge=1, le=12)
    sampler: str | None = Field(None, max_length=64)
    scheduler: str | None = Field(None, max_length=64)
    steps: int | None = Field(None, ge=1, le=200)
    images: int | None = Field(None, ge=1, le=MAX_IMAGES)
    output_format: OutputFormat | None = None
    loras: list[LoraSpec] | None = Field(None, max_length=MAX_LORAS)
    refiner: str | None = Field(None, max_length=500)
    refiner_switch: float | None = Field(None, ge=0.1, le=1.0)
    vae: str | None = Field(None, max_length=500)

    @field_validator("aspect", mode="before")
    @classmethod
    def _aspect(cls, value: object) -> object:
        return normalise_aspect(value) if isinstance(value, str) else value

    @field_validator("loras", mode="before")
    @classmethod
    def _loras(cls, value: object) -> object:
        return lora_entries(value)

    @field_validator("performance", mode="before")
    @classmethod
    def _performance(cls, value: object) -> object:
        return normalise_performance(value) if isinstance(value, str) else value

    @field_validator("output_format", mode="before")
    @classmethod
    def _output_format(cls, value: object) -> object:
        return normalise_output_format(value) if isinstance(value, str) else value


PRESET_KEYS: tuple[str, ...] = tuple(key for key in Preset.model_fields if key not in {"name", "path"})


def bundled_presets_dir() -> Path:
    """The repository's ``presets/`` folder, or the copy shipped inside the package when installed."""
    in_repo = Path(fooocusd.__file__).resolve().parent.parent / "presets"
    if in_repo.is_dir():
        return in_repo
    return Path(fooocusd.__file__).resolve().parent / "data" / "presets"


def bundled_preset_dirs() -> list[Path]:
    """The bundled presets as a search list, to put after the user's folder."""
    return [bundled_presets_dir()]


def preset_search_dirs(user_dir: Path | None) -> list[Path]:
    """``paths.presets`` (if configured) first, then the bundled presets."""
    dirs = [user_dir] if user_dir is not None else []
    return [*dirs, *bundled_preset_dirs()]


def _preset_files(search_dirs: Sequence[Path]) -> dict[str, Path]:
    """Preset name as compared (lower case, one Unicode normalisation) → file, honouring directory
    priority."""
    found: dict[str, Path] = {}
    for directory in search_dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob(f"*{PRESET_SUFFIX}")):
            if path.name.startswith(".") or not path.is_file():
                continue
            found.setdefault(_compared(path.stem), path)
    return found


def list_presets(search_dirs: Sequence[Path]) -> list[str]:
    """Names of every available preset, sorted."""
    return sorted(path.stem for path in _preset_files(search_dirs).values())


def find_preset_file(name: str, search_dirs: Sequence[Path]) -> Path | None:
    """The file for preset ``name`` (matched case-insensitively, and whatever Unicode spelling: an
    inbox subfolder ``réaliste`` made on a Mac finds ``réaliste.toml``), or None."""
    return _preset_files(search_dirs).get(_compared(name.strip()))


def _compared(name: str) -> str:
    return comparable(name).lower()


def load_preset(name: str, search_dirs: Sequence[Path]) -> Preset:
    """Load preset ``name``. Unknown name → ``InvalidInput``; a broken file → ``ConfigError``."""
    path = find_preset_file(name, search_dirs)
    if path is None:
        available = list_presets(search_dirs)
        raise InvalidInput(
            f"there is no preset named '{name}'{suggest(name.lower(), available)}",
            where="preset",
            hint="available presets: " + (", ".join(available) or "none") + "; or leave the preset out",
        )
    return read_preset_file(path)


def read_preset_file(path: Path) -> Preset:
    """Parse and validate one preset file. Raises ``ConfigError`` naming the file and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8").removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"preset file {path} is not valid TOML: {exc}", where=str(path), hint="fix the syntax"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read preset file {path}: {exc}", where=str(path)) from exc

    fields: dict[str, object] = {}
    for raw_key, value in data.items():
        key = canonical_key(raw_key)
        if key not in PRESET_KEYS:
            raise ConfigError(
                f"unknown key '{raw_key}' in preset file {path}{suggest(key, PRESET_KEYS)}",
                where=f"{path}, key '{raw_key}'",
                hint="a preset may set: " + ", ".join(PRESET_KEYS),
            )
        fields[key] = value
    try:
        return Preset(name=path.stem, path=path, **fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"preset file {path}: '{key}' = {shown_value(error.get('input'))} is not valid: {reason}",
            where=f"{path}, key '{key}'",
            hint="see the preset section of the README for each key's allowed values",
        ) from exc


def load_all_presets(search_dirs: Sequence[Path]) -> dict[str, Preset]:
    """Every preset, validated: call at startup and on reload so a broken file stops the daemon early."""
    return {path.stem: read_preset_file(path) for path in _preset_files(search_dirs).values()}


def preset_for_subfolder(relpath_of_input: str | PurePath, search_dirs: Sequence[Path]) -> str | None:
    """``portrait/cat.txt`` (relative to the inbox) → ``"portrait"`` when that preset exists.

    Only the first folder counts: ``portrait/2024/cat.txt`` also uses ``portrait``.
    Files directly in the inbox, and hidden folders, give None.
    """
    parts = PurePosixPath(PurePath(relpath_of_input).as_posix()).parts
    if len(parts) < 2 or parts[0] in {"/", ".", ".."} or parts[0].startswith("."):
        return None
    path = find_preset_file(parts[0], search_dirs)
    return path.stem if path is not None else None


def pick_preset_name(
    job_preset: str | None, subfolder_preset: str | None, defaults: GenerationSettings
) -> str | None:
    """Which preset a job uses: the job's own > its inbox subfolder's > ``generation.preset``.

    An empty ``generation.preset`` means "no preset".
    """
    return job_preset or subfolder_preset or (defaults.preset or None)
