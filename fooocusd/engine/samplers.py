"""Fooocus sampler and scheduler names → a configured diffusers scheduler.

Fooocus (through ComfyUI's k-diffusion samplers) splits the choice in two: the *sampler* is the
solver (``dpmpp_2m_sde_gpu``, ``euler`` ...), the *scheduler* is the noise-level schedule
(``karras``, ``normal`` ...). diffusers folds both into one scheduler class plus options. The tables
below are the translation; to support another name, add one entry (``register_sampler`` /
``register_sigma_schedule``) — nothing else changes.

Differences from Fooocus worth knowing:

- SDE samplers draw their per-step noise from the seeded ``torch.Generator`` passed to the pipeline,
  not from a Brownian tree; results are reproducible per seed but not bit-identical to Fooocus. The
  ``_gpu`` variants only differ in Fooocus by where that tree lives, so they map to the same solver.
- ``normal`` = evenly spaced timesteps (diffusers ``timestep_spacing="linspace"``); ``sgm_uniform``
  and ``simple`` = evenly spaced from the top of the training range (``"trailing"``).
- ``ddim`` with a sigma schedule DDIM cannot express (karras, exponential) runs as Euler on that
  schedule: deterministic DDIM (eta 0) and the Euler step of the probability-flow ODE are the same update.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from fooocusd.errors import InvalidInput

# Options that select a sigma schedule; every schedule sets all of them, so nothing leaks from the
# model's own scheduler config or from a previous job.
_SCHEDULE_SWITCHES: dict[str, Any] = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


@dataclass(frozen=True)
class SamplerRecipe:
    """How to build one Fooocus sampler in diffusers."""

    scheduler_class: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # Used instead of ``scheduler_class`` when that class cannot follow the requested sigma schedule
    # but this one computes the same update on it.
    same_update_on_sigmas: str | None = None


@dataclass(frozen=True)
class SigmaSchedule:
    """A Fooocus scheduler name as diffusers scheduler options."""

    options: Mapping[str, Any]


@dataclass(frozen=True)
class SchedulerChoice:
    """The scheduler built for a job, and what was asked for (for metadata)."""

    scheduler: SchedulerMixin
    sampler: str
    schedule: str

    @property
    def class_name(self) -> str:
        return type(self.scheduler).__name__


_ODE = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SAMPLERS: dict[str, SamplerRecipe] = {
    "euler": SamplerRecipe("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerRecipe("EulerAncestralDiscreteScheduler"),
    "heun": SamplerRecipe("HeunDiscreteScheduler"),
    "dpm_2": SamplerRecipe("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": SamplerRecipe("KDPM2AncestralDiscreteScheduler"),
    "lms": SamplerRecipe("LMSDiscreteScheduler"),
    "dpmpp_2m": SamplerRecipe("DPMSolverMultistepScheduler", _ODE),
    "dpmpp_2m_sde": SamplerRecipe("DPMSolverMultistepScheduler", _SDE),
    "dpmpp_2m_sde_gpu": SamplerRecipe("DPMSolverMultistepScheduler", _SDE),
    "dpmpp_3m_sde": SamplerRecipe("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
    "dpmpp_3m_sde_gpu": SamplerRecipe("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
    "ddim": SamplerRecipe(
        "DDIMScheduler", {"set_alpha_to_one": False}, same_update_on_sigmas="EulerDiscreteScheduler"
    ),
    "ddpm": SamplerRecipe("DDPMScheduler"),
    "uni_pc": SamplerRecipe("UniPCMultistepScheduler", {"solver_type": "bh1"}),
    "uni_pc_bh2": SamplerRecipe("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}

SAMPLER_ALIASES: dict[str, str] = {
    "euler_a": "euler_ancestral",
    "k_euler": "euler",
    "k_euler_a": "euler_ancestral",
}

SIGMA_SCHEDULES: dict[str, SigmaSchedule] = {
    "karras": SigmaSchedule({"use_karras_sigmas": True}),
    "exponential": SigmaSchedule({"use_exponential_sigmas": True}),
    "normal": SigmaSchedule({"timestep_spacing": "linspace"}),
    "sgm_uniform": SigmaSchedule({"timestep_spacing": "trailing"}),
    "simple": SigmaSchedule({"timestep_spacing": "trailing"}),
}


def register_sampler(name: str, recipe: SamplerRecipe) -> None:
    SAMPLERS[name] = recipe


def register_sigma_schedule(name: str, schedule: SigmaSchedule) -> None:
    SIGMA_SCHEDULES[name] = schedule


def sampler_names() -> list[str]:
    return sorted([*SAMPLERS, *SAMPLER_ALIASES])


def schedule_names() -> list[str]:
    return sorted(SIGMA_SCHEDULES)


def build_scheduler(sampler: str, schedule: str, base_config: Mapping[str, Any]) -> SchedulerChoice:
    """Build the scheduler for ``sampler`` + ``schedule`` from the model's own scheduler config.

    ``base_config`` carries the model's training noise schedule (betas, prediction type ...); it is
    never modified. Raises ``InvalidInput`` for unknown names or a combination diffusers cannot run.
    """
    sampler_key = sampler.strip().lower()
    schedule_key = schedule.strip().lower()
    recipe = SAMPLERS.get(SAMPLER_ALIASES.get(sampler_key, sampler_key))
    if recipe is None:
        raise InvalidInput(
            f"unknown sampler {sampler!r}",
            where="sampler",
            hint=f"use one of: {', '.join(sampler_names())}",
        )
    sigma_schedule = SIGMA_SCHEDULES.get(schedule_key)
    if sigma_schedule is None:
        raise InvalidInput(
            f"unknown scheduler {schedule!r}",
            where="scheduler",
            hint=f"use one of: {', '.join(schedule_names())}",
        )
    class_name = recipe.scheduler_class
    missing = _missing_backends(class_name)
    if missing:
        raise InvalidInput(
            f"sampler {sampler!r} needs the Python package(s) {', '.join(missing)}, which are not installed",
            where="sampler",
            hint=f"pip install {' '.join(missing)} into fooocusd's environment, or pick another sampler",
        )
    if not _accepts(class_name, sigma_schedule.options):
        if recipe.same_update_on_sigmas and _accepts(recipe.same_update_on_sigmas, sigma_schedule.options):
            class_name = recipe.same_update_on_sigmas
        else:
            workable = [name for name, s in SIGMA_SCHEDULES.items() if _accepts(class_name, s.options)]
            raise InvalidInput(
                f"sampler {sampler!r} cannot use scheduler {schedule!r} here",
                where="scheduler",
                hint=f"with {sampler!r} use one of: {', '.join(sorted(workable))}",
            )
    scheduler_class = getattr(diffusers, class_name)
    recipe_options = recipe.options if class_name == recipe.scheduler_class else {}
    options = {**recipe_options, **sigma_schedule.options}
    accepted = _init_parameters(class_name)
    switches = {key: value for key, value in _SCHEDULE_SWITCHES.items() if key in accepted}
    config = {key: value for key, value in base_config.items() if not key.startswith("_")}
    scheduler = scheduler_class.from_config({**config, **switches, **options})
    return SchedulerChoice(scheduler=scheduler, sampler=sampler_key, schedule=schedule_key)


def _missing_backends(class_name: str) -> list[str]:
    # diffusers exports a placeholder with a ``_backends`` list when an optional dependency is absent.
    backends = getattr(getattr(diffusers, class_name), "_backends", None)
    return [name for name in backends or () if name != "torch"]


def _accepts(class_name: str, options: Mapping[str, Any]) -> bool:
    return set(options) <= _init_parameters(class_name)


def _init_parameters(class_name: str) -> set[str]:
    return set(inspect.signature(getattr(diffusers, class_name).__init__).parameters)
