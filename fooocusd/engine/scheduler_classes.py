"""diffusers schedulers adjusted to behave like Fooocus's samplers inside fooocusd's denoising loop.

The loop (``fooocusd.engine.denoise``) calls ``set_timesteps(steps, device=...)`` and then
``step(output, t, x, generator=..., eta=0.0)`` for whatever the scheduler's ``step`` accepts. Three
samplers need a small adjustment to fit that contract:

- ``SeededDPMSolverSDEScheduler``: diffusers seeds the Brownian tree of DPM++ SDE from
  ``noise_sampler_seed`` or, without one, at random, so the same job seed would give a different
  image each run. Fooocus seeds the tree from the image seed; here the tree's seed is drawn from the
  loop's generator, which is seeded with the image seed, so a seed always gives the same image.
- ``TrailingLCMScheduler`` / ``TrailingTCDScheduler``: diffusers' LCM and TCD pick their timesteps
  from the distillation grid and ignore ``timestep_spacing``. Fooocus runs them on the
  ``sgm_uniform`` schedule (its ``lcm`` scheduler), so these honour ``timestep_spacing``:
  ``"trailing"`` gives sgm_uniform's timesteps 999·(1 − i/n), ``"linspace"`` the ``normal``
  schedule's 999·(1 − i/(n−1)), both rounded to whole training timesteps (LCM indexes ᾱ by them).
  The LCM boundary condition (c_skip, c_out with σ_data 0.5 and timestep scale 10) is diffusers' own.
- ``SigmaScheduleEulerAncestralScheduler``: diffusers' Euler ancestral steps on its timestep
  spacing only, so Fooocus's default ``karras`` schedule (and ``exponential``) refused ``euler_a``.
  This one takes the same ``use_karras_sigmas`` / ``use_exponential_sigmas`` switches as diffusers'
  Euler and converts σ the same way (Karras ρ = 7 or log-even between σ(999) and σ(0), each σ's
  fractional timestep interpolated in log σ); the ancestral step itself is diffusers' own, as in
  k-diffusion: σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²).
- ``TrailingTCDScheduler`` also drops the ``eta`` argument: in TCD it means γ (how much fresh noise
  each step takes), not DDIM's η, so the loop's ``eta=0.0`` must not reach it. γ stays at 0.3,
  the default of Fooocus's (ComfyUI's) ``tcd`` sampler.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from diffusers import (
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)
from diffusers.configuration_utils import register_to_config

TCD_GAMMA = 0.3
_SEED_RANGE = 2**63 - 1


def spaced_timesteps(spacing: str, steps: int, train_timesteps: int) -> np.ndarray | None:
    """Whole training timesteps, highest first, for ``"trailing"`` or ``"linspace"``; else None."""
    last = train_timesteps - 1
    if spacing == "trailing":
        raw = last * (1.0 - np.arange(steps) / steps)
    elif spacing == "linspace":
        raw = np.linspace(last, 0, steps) if steps > 1 else np.array([float(last)])
    else:
        return None
    return np.round(raw).astype(np.int64)


class _SpacedConsistencyTimesteps:
    """Mixin for LCM/TCD: follow ``timestep_spacing`` instead of the distillation grid."""

    config: Any
    timesteps: torch.Tensor
    num_inference_steps: int | None
    custom_timesteps: bool
    _step_index: int | None
    _begin_index: int | None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        **options: Any,
    ) -> None:
        spaced = (
            spaced_timesteps(
                self.config.timestep_spacing, num_inference_steps, self.config.num_train_timesteps
            )
            if num_inference_steps is not None and not options
            else None
        )
        if spaced is None:
            super().set_timesteps(num_inference_steps, device, **options)  # type: ignore[misc]
            return
        self.num_inference_steps = num_inference_steps
        self.custom_timesteps = True
        self.timesteps = torch.from_numpy(spaced).to(device=device, dtype=torch.long)
        self._step_index = None
        self._begin_index = None


class TrailingLCMScheduler(_SpacedConsistencyTimesteps, LCMScheduler):
    """LCM multistep sampling (denoise with the boundary condition, re-noise to the next timestep)."""


class TrailingTCDScheduler(_SpacedConsistencyTimesteps, TCDScheduler):
    """TCD sampling with Fooocus's γ = 0.3, on the timestep spacing of the chosen schedule."""

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> Any:
        return super().step(
            model_output, timestep, sample, eta=TCD_GAMMA, generator=generator, return_dict=return_dict
        )


class SeededDPMSolverSDEScheduler(DPMSolverSDEScheduler):
    """DPM++ SDE whose Brownian tree is seeded from the loop's (image-seeded) generator."""

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        s_noise: float = 1.0,
    ) -> Any:
        if self.noise_sampler is None and self.noise_sampler_seed is None and generator is not None:
            self.noise_sampler_seed = _tree_seed(generator)
        with warnings.catch_warnings():
            # torchsde notes float rounding at the tree's lower end (σmin as float32 vs float64); harmless.
            warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)
            return super().step(model_output, timestep, sample, return_dict=return_dict, s_noise=s_noise)

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        # set_timesteps drops the tree; the next run draws its tree seed from its own generator.
        self.noise_sampler_seed = self.config.noise_sampler_seed


class SigmaScheduleEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """Euler ancestral on the Karras or exponential σ schedule too."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
    ) -> None:
        if use_beta_sigmas or (use_karras_sigmas and use_exponential_sigmas):
            raise ValueError(
                "use one of use_karras_sigmas and use_exponential_sigmas (beta sigmas are not offered)"
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        if self.config.use_karras_sigmas:
            convert = EulerDiscreteScheduler._convert_to_karras
        elif self.config.use_exponential_sigmas:
            convert = EulerDiscreteScheduler._convert_to_exponential
        else:
            return
        spaced = self.sigmas[:-1].numpy().astype(np.float64)  # the spacing's σ, from σ(999) down to σ(0)
        sigmas = np.asarray(convert(self, in_sigmas=spaced, num_inference_steps=num_inference_steps))
        alphas = self.alphas_cumprod.numpy().astype(np.float64)
        training = ((1 - alphas) / alphas) ** 0.5
        timesteps = EulerDiscreteScheduler._sigma_to_t(self, sigmas, np.log(training))
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)


def _tree_seed(generator: torch.Generator | list[torch.Generator]) -> int | list[int]:
    """The Brownian tree's seed: one per image for a batch (diffusers then grows one tree per row,
    each the same as that image's own tree alone), one number for a single generator."""
    if isinstance(generator, list):
        seeds = [_tree_seed(one) for one in generator]
        return seeds[0] if len(seeds) == 1 else seeds  # type: ignore[return-value]
    return int(torch.randint(0, _SEED_RANGE, (1,), generator=generator).item())


LOCAL_SCHEDULER_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TrailingLCMScheduler,
        TrailingTCDScheduler,
        SeededDPMSolverSDEScheduler,
        SigmaScheduleEulerAncestralScheduler,
    )
}
