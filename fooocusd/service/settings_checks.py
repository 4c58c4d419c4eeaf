"""Checks of a configuration beyond its syntax, at start, on reload and by ``config check``.

A default that cannot work (a preset that is not there, an unknown style, a sampler that cannot
run on the scheduler) would otherwise refuse or fail every job that relies on it, one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.engine.models import ModelLocation, resolve_model
from fooocusd.engine.samplers import check_sampler
from fooocusd.engine.styles import StyleLibrary, load_styles
from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.jobs.performance import forced_settings
from fooocusd.jobs.preset_check import describe_missing, missing_default_files
from fooocusd.jobs.presets import load_all_presets, load_preset
from fooocusd.settings import GenerationSettings, Settings


@dataclass(frozen=True)
class CheckedConfiguration:
    model: ModelLocation
    styles: StyleLibrary
    presets: int
    warning: str | None
    """Applied all the same: model files the defaults need but lack (see below)."""


def check_configuration(
    settings: Settings, models: Sequence[Path], styles_dir: Path | None, preset_dirs: Sequence[Path]
) -> CheckedConfiguration:
    """Everything a daemon would refuse to start (or reload) with, as a ``ConfigError``: a model that
    cannot be found, a broken preset or style file, a default no job could run with.

    ``models`` and ``styles_dir`` are the folders in use (a reload keeps those of the start).
    """
    model = resolve_model(settings.engine.model, models, allow_pickle=settings.engine.allow_unsafe_pickle)
    presets = load_all_presets(preset_dirs)
    styles = load_styles([styles_dir] if styles_dir else [])
    check_generation_defaults(settings.generation, preset_dirs, styles)
    warning = missing_default_files_warning(settings.generation, preset_dirs, models, settings.engine.model)
    return CheckedConfiguration(model, styles, len(presets), warning)


def check_generation_defaults(
    generation: GenerationSettings, preset_dirs: Sequence[Path], styles: StyleLibrary
) -> None:
    """``ConfigError`` naming the ``generation.*`` key whose value no job could run with."""
    # A fast performance mode replaces the sampler and scheduler with its own.
    forced = forced_settings(generation.performance)
    sampler = forced.get("sampler", generation.sampler)
    scheduler = forced.get("scheduler", generation.scheduler)
    try:
        load_preset(generation.preset, preset_dirs)
        styles.canonical_names(generation.styles)
        check_sampler(sampler, scheduler)
    except InvalidInput as exc:
        raise ConfigError(exc.message, hint=exc.hint, where=f"generation.{exc.where or 'styles'}") from exc


def missing_default_files_warning(
    generation: GenerationSettings,
    preset_dirs: Sequence[Path],
    models: ModelDirs | Sequence[Path],
    engine_model: str,
) -> str | None:
    """What to download so that a job setting nothing itself can run, or None when nothing is missing.

    Only a warning: jobs that name their own preset or performance still run, and each job that
    needs a missing file fails with the same advice, so the start (or reload) goes on.
    """
    preset = load_preset(generation.preset, preset_dirs)
    missing = missing_default_files(preset, generation.performance, models, engine_model)
    if not missing:
        return None
    files, fetch = describe_missing(missing)
    return (
        f"the defaults (preset '{generation.preset}', performance '{generation.performance}') need model "
        f"files that are not installed: {files}. Jobs that rely on them will fail until you run `{fetch}`"
    )
