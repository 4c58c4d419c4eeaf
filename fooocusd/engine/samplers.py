"""Fooocus sampler and scheduler names → a configured diffusers scheduler.

Fooocus (through ComfyUI's k-diffusion samplers) splits the choice in two: the *sampler* is the
solver (``dpmpp_2m_sde_gpu``, ``euler`` ...), the *scheduler* is the noise-level schedule
(``karras``, ``normal`` ...). diffusers folds both into one scheduler class plus options. The tables
below are the translation; to support another name, add one entry (``register_sampler`` /
``register_sigma_schedule``) — nothing else changes.

Schedules, against Fooocus's (ComfyUI's) definitions, with the model's training sigmas σ(t):

- ``normal``: timesteps evenly spaced from 999 down to 0 (diffusers ``timestep_spacing="linspace"``).
- ``karras``: Karras et al. (2022) ρ = 7 ramp, σ_i = (σmax^(1/ρ) + i/(n−1)·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ,
  between σmin = σ(0) and σmax = σ(999), then 0. ``linspace`` spacing is set with it: on the
  ``leading`` spacing SDXL's config ships with, diffusers would take σmax from the top *leading*
  timestep (σ ≈ 11.5 at 30 steps instead of 14.6), a weaker start than Fooocus's.
- ``exponential``: σ evenly spaced in log σ between the same σmax and σmin, then 0.
- ``sgm_uniform``: timesteps 999·(1 − i/n), i = 0…n−1 (the top n of n+1 evenly spaced points).
  ``simple``: every (1000/n)-th training sigma from the top, i.e. timesteps 999 − ⌊1000·i/n⌋.
  The two differ by less than one training timestep (and not at all when n divides 1000), below
  what diffusers' options can tell apart: both are ``timestep_spacing="trailing"``
  (999 − round(1000·i/n)).
- ``lcm``: Fooocus's name for "LCM discrete sampling on the sgm_uniform schedule". In diffusers the
  LCM boundary condition (c_skip/c_out) lives in ``LCMScheduler.step``, so ``lcm`` works with the
  ``lcm`` sampler only, on sgm_uniform's timesteps (see ``scheduler_classes``). With other samplers
  use ``sgm_uniform``.

Samplers, where diffusers differs from Fooocus:

- SDE samplers draw their per-step noise from the seeded ``torch.Generator`` passed to the loop,
  not from a Brownian tree; results are reproducible per seed but not bit-identical to Fooocus. The
  ``_gpu`` variants only differ in Fooocus by where that tree lives, so they map to the same solver.
  ``dpmpp_sde`` (and ``_gpu``) does use a Brownian tree (torchsde), seeded from that generator.
- ``lcm`` and ``tcd`` are the consistency-model samplers of the LCM and TCD LoRAs (Extreme Speed);
  ``tcd`` uses Fooocus's γ = 0.3. Both need a schedule of evenly spaced timesteps (``sgm_uniform``,
  ``simple``, ``normal``, or ``lcm`` for the lcm sampler); σ-shaped schedules (karras,
  exponential) are refused because they step on whole training timesteps.
- ``ddim`` with a sigma schedule DDIM cannot express (karras, exponential) runs as Euler on that
  schedule: deterministic DDIM (eta 0) and the Euler step of the probability-flow ODE are the same update.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from fooocusd.engine.scheduler_classes import LOCAL_SCHEDULER_CLASSES
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
    # When not empty, the only samplers (canonical names) this schedule can run with.
    only_samplers: frozenset[str] = frozenset()


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
    "euler_ancestral": SamplerRecipe(
        "EulerAncestralDiscreteScheduler", same_update_on_sigmas="SigmaScheduleEulerAncestralScheduler"
    ),
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
    # DDPM's posterior step, written on σ (ᾱ = 1/(1+σ²)), is Euler ancestral's: mean
    # x0 + σs²/σt²·(xt − x0), variance σs²(σt² − σs²)/σt² (tests/test_engine_samplers.py checks it).
    "ddpm": SamplerRecipe("DDPMScheduler", same_update_on_sigmas="SigmaScheduleEulerAncestralScheduler"),
    # bh1's update divides by h, which is infinite on the final step to σ = 0 (NaN images), so it
    # ends at σmin instead; ComfyUI's UniPC likewise never steps to exactly 0.
    "uni_pc": SamplerRecipe(
        "UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}
    ),
    "uni_pc_bh2": SamplerRecipe("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "dpmpp_sde": SamplerRecipe("SeededDPMSolverSDEScheduler"),
    "dpmpp_sde_gpu": SamplerRecipe("SeededDPMSolverSDEScheduler"),
    "lcm": SamplerRecipe("TrailingLCMScheduler"),
    "tcd": SamplerRecipe("TrailingTCDScheduler"),
}

SAMPLER_ALIASES: dict[str, str] = {
    "euler_a": "euler_ancestral",
    "k_euler": "euler",
    "k_euler_a": "euler_ancestral",
    "unipc": "uni_pc",
}

SIGMA_SCHEDULES: dict[str, SigmaSchedule] = {
    "karras": SigmaSchedule({"use_karras_sigmas": True, "timestep_spacing": "linspace"}),
    "exponential": SigmaSchedule({"use_exponential_sigmas": True, "timestep_spacing": "linspace"}),
    "normal": SigmaSchedule({"timestep_spacing": "linspace"}),
    "sgm_uniform": SigmaSchedule({"timestep_spacing": "trailing"}),
    "simple": SigmaSchedule({"timestep_spacing": "trailing"}),
    "lcm": SigmaSchedule({"timestep_spacing": "trailing"}, only_samplers=frozenset({"lcm"})),
}


def register_sampler(name: str, recipe: SamplerRecipe) -> None:
    SAMPLERS[name] = recipe


def register_sigma_schedule(name: str, schedule: SigmaSchedule) -> None:
    SIGMA_SCHEDULES[name] = schedule


def sampler_names() -> list[str]:
    return sorted([*SAMPLERS, *SAMPLER_ALIASES])


def schedule_names() -> list[str]:
    return sorted(SIGMA_SCHEDULES)


def check_sampler(sampler: str, schedule: str) -> str:
    """The scheduler class that runs ``sampler`` on ``schedule``.

    Raises ``InvalidInput`` for an unknown name (with the closest known ones), a sampler whose
    package is not installed, or a pair no class can run. The intake calls it, so that a job
    naming one is refused when it is dropped rather than failing when its turn comes.
    """
    canonical = _canonical_sampler(sampler)
    recipe = SAMPLERS.get(canonical)
    if recipe is None:
        raise InvalidInput(
            f"unknown sampler {sampler!r}{_closest(canonical, sampler_names())}",
            where="sampler",
            hint=f"use one of: {', '.join(sampler_names())}",
        )
    schedule_key = schedule.strip().lower()
    sigma_schedule = SIGMA_SCHEDULES.get(schedule_key)
    if sigma_schedule is None:
        raise InvalidInput(
            f"unknown scheduler {schedule!r}{_closest(schedule_key, schedule_names())}",
            where="scheduler",
            hint=f"use one of: {', '.join(schedule_names())}",
        )
    missing = _missing_backends(recipe.scheduler_class)
    if missing:
        raise InvalidInput(
            f"sampler {sampler!r} needs the Python package(s) {', '.join(missing)}, which are not installed",
            where="sampler",
            hint=f"pip install {' '.join(missing)} into fooocusd's environment, or pick another sampler",
        )
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
    recipe = SAMPLERS[_canonical_sampler(sampler)]
    recipe_options = recipe.options if class_name == recipe.scheduler_class else {}
    options = {**recipe_options, **SIGMA_SCHEDULES[schedule_key].options}
    accepted = _init_parameters(class_name)
    switches = {key: value for key, value in _SCHEDULE_SWITCHES.items() if key in accepted}
    # Only the keys the class knows: the rest (another class's options) would just be logged and dropped.
    config = {key: value for key, value in base_config.items() if key in accepted}
    scheduler = _fresh_scheduler(class_name, json.dumps({**config, **switches, **options}, sort_keys=True))
    return SchedulerChoice(scheduler=scheduler, sampler=sampler_key, schedule=schedule_key)


def _canonical_sampler(sampler: str) -> str:
    key = sampler.strip().lower()
    return SAMPLER_ALIASES.get(key, key)


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return (" — did you mean " + " or ".join(f"'{match}'" for match in close) + "?") if close else ""


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
