"""The names a job will run with: its preset, styles, sampler and scheduler.

A name that cannot work refuses the file when it is dropped (and ``fooocusd submit`` refuses it
before it reaches the inbox), rather than failing the job when its turn comes, perhaps hours later.
The preset may come from the job, from the inbox subfolder it was dropped in, or from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.jobs.presets import Preset, load_preset
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.settings import Settings

SamplerCheck = Callable[[str, str], object]
"""Raises ``InvalidInput`` for a sampler and scheduler that cannot run together."""


def with_preset(
    spec: JobSpec, routed: str | None, place: str, settings: Settings, preset_dirs: Sequence[Path]
) -> tuple[JobSpec, Preset, str]:
    """The job with its subfolder's preset filled in, that preset, and its name.

    ``routed`` is the preset the inbox subfolder names (None at the top of the inbox); ``place``
    is how errors name the job ("job 2" in a file of several, else "").
    """
    if spec.preset is None and routed is not None:
        spec = spec.model_copy(update={"preset": routed})
    preset_name = spec.preset or settings.generation.preset
    try:
        preset = load_preset(preset_name, preset_dirs)
    except ConfigError as exc:  # the preset file itself is broken (edited while running)
        raise InvalidInput(exc.message, where=exc.where or "preset", hint=exc.hint) from exc
    except InvalidInput as exc:
        raise InvalidInput(exc.message, where=place or "preset", hint=exc.hint) from exc
    return spec, preset, preset_name


def check_job_names(
    spec: JobSpec,
    preset: Preset,
    preset_name: str,
    place: str,
    settings: Settings,
    styles: StyleLibrary,
    check_sampler: SamplerCheck,
) -> None:
    """Refuse styles, or a sampler and scheduler, that the job would run with and that cannot work.

    The error says where a bad sampler came from: the job, its preset, or the configuration.
    """
    prefix = f"{place}, " if place else ""
    chosen_styles = _first_set(spec.styles, preset.styles, settings.generation.styles)
    try:
        styles.canonical_names(chosen_styles)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, where=f"{prefix}styles", hint=exc.hint) from exc
    if spec.seed is None:  # not chosen yet (before the intake): any seed resolves the same names
        spec = spec.model_copy(update={"seed": 0})
    request = resolve_requests(spec, preset, settings.generation, settings.engine.model)[0]
    try:
        check_sampler(request.sampler, request.scheduler)
    except InvalidInput as exc:
        field = exc.where or "sampler"
        if field in spec.model_fields_set or "performance" in spec.model_fields_set:
            origin = ""
        elif getattr(preset, field, None) is not None:
            origin = f" (from the preset '{preset_name}')"
        else:
            origin = f" (from generation.{field} in the configuration)"
        raise InvalidInput(exc.message, where=f"{prefix}{field}{origin}", hint=exc.hint) from exc


def _first_set(*candidates: list[str] | None) -> list[str]:
    """Styles come from the job, else its preset, else the config (an empty list counts as set)."""
    return next((list(c) for c in candidates if c is not None), [])
