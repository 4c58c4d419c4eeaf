"""The scheduler's state on the host, so stepping it never reads from the device.

diffusers' ``set_timesteps(device=...)`` puts ``timesteps`` on the execution device, and
``step``/``scale_model_input`` receive a device timestep. Several schedulers then index host
tensors with it (``alphas_cumprod[timestep]`` in DDPM, LCM and TCD), compare it (``if t > 0``) or
look it up (``(timesteps == t).nonzero()``): each is a device→host read that waits for the GPU, every
step. Kept on the host, those are plain CPU arithmetic on a handful of numbers.

``HostSchedule.take(scheduler)`` copies every tensor the scheduler holds on a device to the CPU once,
before the loop — the loop's only device→host copy — and keeps the device timesteps for the model
itself. The loop then gives the scheduler ``schedule.scheduler_timestep(i)`` (a CPU tensor), the UNet
``schedule.device_timesteps[i]``, and reads step numbers from ``schedule.values``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin

from fooocusd.engine.sync_audit import expected_host_read


@dataclass(frozen=True)
class HostSchedule:
    device_timesteps: torch.Tensor
    """The timesteps where the model runs (what ``set_timesteps`` made), for the UNet."""
    host_timesteps: torch.Tensor
    """The same timesteps on the CPU, now also the scheduler's own ``timesteps``."""
    values: list[float]
    """The same timesteps as Python numbers, for decisions made on the host."""

    @classmethod
    def take(cls, scheduler: SchedulerMixin) -> HostSchedule:
        """Move ``scheduler``'s device tensors to the CPU (after ``set_timesteps``, before the loop)."""
        device_timesteps = scheduler.timesteps
        with expected_host_read("the scheduler's state, copied to the host once before the loop"):
            for name, value in list(vars(scheduler).items()):
                if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                    setattr(scheduler, name, value.cpu())
        host_timesteps = scheduler.timesteps
        return cls(device_timesteps, host_timesteps, [float(t) for t in host_timesteps.tolist()])

    def scheduler_timestep(self, index: int) -> torch.Tensor:
        return self.host_timesteps[index]
