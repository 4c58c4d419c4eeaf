"""Fooocus sampler and scheduler names, and what each one is in diffusers: data only.

No torch or diffusers here, so job files, presets and configurations can be checked by name
without loading them (``check_sampler_names``); ``samplers.py`` builds the schedulers.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fooocusd.errors import InvalidInput, suggest


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


def canonical_sampler(sampler: str) -> str:
    """``Euler_A`` → ``euler_ancestral``: lower case, aliases resolved."""
    key = sampler.strip().lower()
    return SAMPLER_ALIASES.get(key, key)


def check_sampler_names(sampler: str, schedule: str) -> tuple[SamplerRecipe, SigmaSchedule]:
    """The table entries for ``sampler`` and ``schedule``.

    Raises ``InvalidInput`` for an unknown name (with the closest known ones) or a schedule made
    for other samplers. Whether diffusers can run the pair is ``samplers.check_sampler``'s part.
    """
    canonical = canonical_sampler(sampler)
    recipe = SAMPLERS.get(canonical)
    if recipe is None:
        raise InvalidInput(
            f"unknown sampler {sampler!r}{suggest(canonical, sampler_names(), limit=2)}",
            where="sampler",
            hint=f"use one of: {', '.join(sampler_names())}",
        )
    sigma_schedule = SIGMA_SCHEDULES.get(schedule.strip().lower())
    if sigma_schedule is None:
        raise InvalidInput(
            f"unknown scheduler {schedule!r}{suggest(schedule.strip().lower(), schedule_names(), limit=2)}",
            where="scheduler",
            hint=f"use one of: {', '.join(schedule_names())}",
        )
    if sigma_schedule.only_samplers and canonical not in sigma_schedule.only_samplers:
        workable = sorted(name for name, s in SIGMA_SCHEDULES.items() if not s.only_samplers)
        raise InvalidInput(
            f"sampler {sampler!r} cannot use scheduler {schedule!r}",
            where="scheduler",
            hint=f"{schedule!r} is for {', '.join(sorted(sigma_schedule.only_samplers))} only; "
            f"with {sampler!r} use one of: {', '.join(workable)}",
        )
    return recipe, sigma_schedule
