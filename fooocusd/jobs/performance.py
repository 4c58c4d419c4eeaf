"""Performance modes: step counts, and what the fast modes force, as in Fooocus.

Quality and Speed only choose a step count. The three fast modes (Extreme Speed, Lightning,
Hyper-SD) run a distilled few-step LoRA, and that LoRA only works with the sampler, scheduler and
guidance it was distilled for, so they force those values over anything a job or preset says
(Fooocus does the same): CFG 1 (which also skips the negative prompt), sharpness 0, adaptive CFG 1,
ADM guidance off (1 / 1 / 0) and no refiner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, get_args

from fooocusd.jobs.spec import Performance


@dataclass(frozen=True)
class PerformanceMode:
    """One row of the performance table."""

    name: Performance
    label: str
    steps: int
    uov_steps: int
    """Steps for upscale and vary (Fooocus's ``StepsUOV``)."""
    lora: tuple[str, float] | None = None
    """(file name, weight) of the distilled LoRA a fast mode adds."""
    sampler: str | None = None
    scheduler: str | None = None

    @property
    def is_fast(self) -> bool:
        return self.lora is not None


PERFORMANCE_MODES: dict[str, PerformanceMode] = {
    mode.name: mode
    for mode in (
        PerformanceMode("quality", "Quality", steps=60, uov_steps=36),
        PerformanceMode("speed", "Speed", steps=30, uov_steps=18),
        PerformanceMode(
            "extreme_speed",
            "Extreme Speed",
            steps=8,
            uov_steps=8,
            lora=("sdxl_lcm_lora.safetensors", 1.0),
            sampler="lcm",
            scheduler="lcm",
        ),
        PerformanceMode(
            "lightning",
            "Lightning",
            steps=4,
            uov_steps=4,
            lora=("sdxl_lightning_4step_lora.safetensors", 1.0),
            sampler="euler",
            scheduler="sgm_uniform",
        ),
        PerformanceMode(
            "hyper_sd",
            "Hyper-SD",
            steps=4,
            uov_steps=4,
            lora=("sdxl_hyper_sd_4step_lora.safetensors", 0.8),
            sampler="dpmpp_sde_gpu",
            scheduler="karras",
        ),
    )
}
assert set(PERFORMANCE_MODES) == set(get_args(Performance)), "the table must cover every Performance"

FAST_MODE_SETTINGS: dict[str, Any] = {
    "sharpness": 0.0,
    "cfg": 1.0,
    "adaptive_cfg": 1.0,
    "refiner": "",
    "refiner_switch": 1.0,
    "adm_scaler_positive": 1.0,
    "adm_scaler_negative": 1.0,
    "adm_scaler_end": 0.0,
}
"""Request fields every fast mode forces, whatever the job or preset asked for."""

PERFORMANCE_STEPS: dict[str, int] = {name: mode.steps for name, mode in PERFORMANCE_MODES.items()}


def performance_mode(performance: str) -> PerformanceMode:
    """The table row for a canonical performance name (``speed``, ``hyper_sd`` ...)."""
    return PERFORMANCE_MODES[performance]


def steps_for(performance: str) -> int:
    return PERFORMANCE_MODES[performance].steps


def uov_steps(performance: str) -> int:
    """Steps for upscale/vary (image-to-image) in this mode: Quality 36, Speed 18, fast modes as usual."""
    return PERFORMANCE_MODES[performance].uov_steps


def forced_settings(performance: str) -> dict[str, Any]:
    """Request fields this mode forces (empty for Quality and Speed), sampler and scheduler included.

    The outbox can list these in metadata to show which of a job's values were overridden.
    """
    mode = PERFORMANCE_MODES[performance]
    if not mode.is_fast:
        return {}
    return {"sampler": mode.sampler, "scheduler": mode.scheduler, **FAST_MODE_SETTINGS}


def performance_lora(performance: str) -> tuple[str, float] | None:
    """The (file name, weight) of the LoRA this mode adds, or None."""
    return PERFORMANCE_MODES[performance].lora


def fetch_name(file_name: str) -> str:
    """The name ``fooocusd models fetch`` takes for a model file: its name without the suffix."""
    return PurePath(file_name).name.removesuffix(".safetensors")
