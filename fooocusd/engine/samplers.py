"""Fooocus sampler and scheduler names → a configured diffusers scheduler.

The names, and what each is in diffusers, are the tables in ``sampler_table.py`` (where the
schedules and the samplers' differences from Fooocus are described). This module builds the
scheduler a job runs with, and checks what only diffusers can tell: that the sampler's package is
installed, and that a scheduler class can follow the schedule.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from fooocusd.engine.sampler_table import (
    SAMPLER_ALIASES,
    SAMPLERS,
    SIGMA_SCHEDULES,
    SamplerRecipe,
    SigmaSchedule,
    canonical_sampler,
    check_sampler_names,
    register_sampler,
    register_sigma_schedule,
    sampler_names,
    schedule_names,
)
from fooocusd.engine.scheduler_classes import LOCAL_SCHEDULER_CLASSES
from fooocusd.errors import InvalidInput

__all__ = [
    "SAMPLERS",
    "SAMPLER_ALIASES",
    "SIGMA_SCHEDULES",
    "SamplerRecipe",
    "SchedulerChoice",
    "SigmaSchedule",
    "build_scheduler",
    "check_sampler",
    "register_sampler",
    "register_sigma_schedule",
    "sampler_names",
    "schedule_names",
]

# Options that select a sigma schedule; every schedule sets all of them, so nothing leaks from the
# model's own scheduler config or from a previous job.
_SCHEDULE_SWITCHES: dict[str, Any] = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


@dataclass(frozen=True)
class SchedulerChoice:
    """The scheduler built for a job, and what was asked for (for metadata)."""

    scheduler: SchedulerMixin
    sampler: str
    schedule: str

    @property
    def class_name(self) -> str:
        return type(self.scheduler).__name__


def check_sampler(sampler: str, schedule: str) -> str:
    """The scheduler class that runs ``sampler`` on ``schedule``.

    Raises ``InvalidInput`` for an unknown name (with the closest known ones), a sampler whose
    package is not installed, or a pair no class can run. The intake calls it, so that a job
    naming one is refused when it is dropped rather than failing when its turn comes.
    """
    recipe, sigma_schedule = check_sampler_names(sampler, schedule)
    missing = _missing_backends(recipe.scheduler_class)
    if missing:
        raise InvalidInput(
            f"sampler {sampler!r} needs the Python package(s) {', '.join(missing)}, which are not installed",
            where="sampler",
            hint=f"pip install {' '.join(missing)} into fooocusd's environment, or pick another sampler",
        )
    canonical = canonical_sampler(sampler)
    class_name = _class_for(canonical, recipe, sigma_schedule)
    if class_name is None:
        workable = [name for name, s in SIGMA_SCHEDULES.items() if _class_for(canonical, recipe, s)]
        raise InvalidInput(
            f"sampler {sampler!r} cannot use scheduler {schedule!r}",
            where="scheduler",
            hint=f"with {sampler!r} use one of: {', '.join(sorted(workable))}",
        )
    return class_name


def build_scheduler(sampler: str, schedule: str, base_config: Mapping[str, Any]) -> SchedulerChoice:
    """Build the scheduler for ``sampler`` + ``schedule`` from the model's own scheduler config.

    ``base_config`` carries the model's training noise schedule (betas, prediction type ...); it is
    never modified. Raises ``InvalidInput`` for unknown names or a combination diffusers cannot run.
    """
    class_name = check_sampler(sampler, schedule)
    sampler_key = sampler.strip().lower()
    schedule_key = schedule.strip().lower()
    recipe = SAMPLERS[canonical_sampler(sampler)]
    recipe_options = recipe.options if class_name == recipe.scheduler_class else {}
    options = {**recipe_options, **SIGMA_SCHEDULES[schedule_key].options}
    accepted = _init_parameters(class_name)
    switches = {key: value for key, value in _SCHEDULE_SWITCHES.items() if key in accepted}
    # Only the keys the class knows: the rest (another class's options) would just be logged and dropped.
    config = {key: value for key, value in base_config.items() if key in accepted}
    scheduler = _fresh_scheduler(class_name, json.dumps({**config, **switches, **options}, sort_keys=True))
    return SchedulerChoice(scheduler=scheduler, sampler=sampler_key, schedule=schedule_key)


def _fresh_scheduler(class_name: str, config_json: str) -> SchedulerMixin:
    # Some classes are slow to construct (KDPM2 spends seconds converting its 1000 training sigmas);
    # build each configuration once and hand out copies, so jobs never share scheduler state.
    return copy.deepcopy(_prototype(class_name, config_json))


@functools.lru_cache(maxsize=64)
def _prototype(class_name: str, config_json: str) -> SchedulerMixin:
    return _scheduler_class(class_name).from_config(json.loads(config_json))


def _class_for(sampler: str, recipe: SamplerRecipe, schedule: SigmaSchedule) -> str | None:
    """The scheduler class that runs ``sampler`` on ``schedule``, or None when none can."""
    if schedule.only_samplers and sampler not in schedule.only_samplers:
        return None
    if _accepts(recipe.scheduler_class, schedule.options):
        return recipe.scheduler_class
    if recipe.same_update_on_sigmas and _accepts(recipe.same_update_on_sigmas, schedule.options):
        return recipe.same_update_on_sigmas
    return None


def _scheduler_class(class_name: str) -> type:
    return LOCAL_SCHEDULER_CLASSES.get(class_name) or getattr(diffusers, class_name)


def _missing_backends(class_name: str) -> list[str]:
    # diffusers exports a placeholder with a ``_backends`` list when an optional dependency is absent.
    backends = getattr(_scheduler_class(class_name), "_backends", None)
    return [name for name in backends or () if name != "torch"]


def _accepts(class_name: str, options: Mapping[str, Any]) -> bool:
    return set(options) <= _init_parameters(class_name)


def _init_parameters(class_name: str) -> set[str]:
    return set(inspect.signature(_scheduler_class(class_name).__init__).parameters)
