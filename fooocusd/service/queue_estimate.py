"""How long the queue will take: the images left, at the pace of the last ones made.

The pace is the time between the last images completed (up to ``RECENT_IMAGES`` of them), leaving
out the gaps over ``IDLE_GAP_SECONDS`` during which the daemon was idle, paused or stopped. Images
of one batch complete together, so the pace is taken over the whole span, not per gap.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fooocusd.errors import FooocusdError
from fooocusd.jobs.presets import load_preset
from fooocusd.journal.journal import Journal
from fooocusd.settings import Settings

RECENT_IMAGES = 50
IDLE_GAP_SECONDS = 600.0
MIN_IMAGES_FOR_A_PACE = 3


@dataclass(frozen=True)
class QueueEstimate:
    images_left: int
    seconds_per_image: float | None
    """None until enough images were made to tell."""

    @property
    def seconds_left(self) -> float | None:
        return None if self.seconds_per_image is None else self.images_left * self.seconds_per_image

    def record(self) -> dict[str, float | int | None]:
        return {
            "images_left": self.images_left,
            "seconds_per_image": self.seconds_per_image,
            "seconds_left": self.seconds_left,
        }

    def describe(self) -> str:
        text = f"about {self.images_left} image(s) to make"
        if self.seconds_left is not None and self.seconds_per_image is not None:
            pace = f"{self.seconds_per_image:.1f} s per image"
            text += f", {duration_text(self.seconds_left)} at the recent pace of {pace}"
        return text


def estimate_queue(journal: Journal, settings: Settings, preset_dirs: Sequence[Path]) -> QueueEstimate:
    return QueueEstimate(
        journal.images_left(images_per_preset(settings, preset_dirs)),
        recent_pace(journal.recent_output_times(RECENT_IMAGES)),
    )


def images_per_preset(settings: Settings, preset_dirs: Sequence[Path]) -> Callable[[str | None], int]:
    """How many images a job that does not say makes, by the preset it names (None: the default
    preset): the preset's ``images``, else ``generation.images``."""

    @functools.cache
    def images(name: str | None) -> int:
        try:
            preset = load_preset(name or settings.generation.preset, preset_dirs)
        except FooocusdError:  # gone or broken since: the job fails when it runs
            return settings.generation.images
        return preset.images or settings.generation.images

    return images


def recent_pace(completed: list[float]) -> float | None:
    """Seconds per image over ``completed`` (times, oldest first), idle gaps left out."""
    if len(completed) < MIN_IMAGES_FOR_A_PACE:
        return None
    gaps = [later - earlier for earlier, later in itertools.pairwise(completed)]
    busy = [gap for gap in gaps if gap <= IDLE_GAP_SECONDS]
    if len(busy) < MIN_IMAGES_FOR_A_PACE - 1 or sum(busy) <= 0:
        return None
    return sum(busy) / len(busy)


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"
