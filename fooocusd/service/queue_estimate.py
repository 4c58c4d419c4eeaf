"""How long the queue will take: the images left, at the pace of the last ones made.

The pace is the time between the last images completed (up to ``RECENT_IMAGES`` of them), leaving
out the gaps over ``IDLE_GAP_SECONDS`` during which the daemon was idle, paused or stopped. Images
of one batch complete together, so the pace is taken over the whole span, not per gap.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from fooocusd.journal.journal import Journal

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


def estimate_queue(journal: Journal, default_images: int) -> QueueEstimate:
    return QueueEstimate(
        journal.images_left(default_images), recent_pace(journal.recent_output_times(RECENT_IMAGES))
    )


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
