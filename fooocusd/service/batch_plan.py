"""Which pending images render together in one UNet batch.

Images share a batch when the engine gives their requests the same non-None ``batch_key``. Image
actions (vary, upscale, inpaint) always render alone. Within a job, only consecutive pending
images are taken, so a job's images still render in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from fooocusd.engine.base import GenerationRequest
from fooocusd.service.job_prep import PreparedJob

KeyOf = Callable[[GenerationRequest], Hashable | None]


@dataclass(frozen=True)
class BatchItem:
    run: PreparedJob
    index: int

    @property
    def request(self) -> GenerationRequest:
        return self.run.requests[self.index]


def image_key(run: PreparedJob, index: int, key_of: KeyOf) -> Hashable | None:
    if run.image_input is not None:
        return None
    return key_of(run.requests[index])


def first_key(run: PreparedJob, key_of: KeyOf) -> Hashable | None:
    """The key of the job's next image to render (None: it renders alone, or nothing is left)."""
    if run.ended or not run.to_render:
        return None
    return image_key(run, run.to_render[0], key_of)


def take_matching(run: PreparedJob, key: Hashable | None, room: int, key_of: KeyOf) -> list[BatchItem]:
    """Take up to ``room`` of ``run``'s next images whose key is ``key`` (off its to-render list).

    With ``key`` None, only the next image is taken, alone.
    """
    taken: list[BatchItem] = []
    while run.to_render and len(taken) < room and not run.ended:
        index = run.to_render[0]
        if key is None:
            if taken:
                break
        elif image_key(run, index, key_of) != key:
            break
        run.to_render.pop(0)
        taken.append(BatchItem(run, index))
        if key is None:
            break
    return taken
