"""The limits every engine holds a ``GenerationRequest`` to before it renders anything."""

from __future__ import annotations

from fooocusd.engine.base import GenerationRequest
from fooocusd.errors import InvalidInput

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 4096, 8
MAX_STEPS = 200


def validate_request(request: GenerationRequest) -> None:
    """``InvalidInput`` for a size, step count or CFG no model can render."""
    for label, side in (("width", request.width), ("height", request.height)):
        if not (MIN_SIDE <= side <= MAX_SIDE) or side % SIDE_MULTIPLE:
            raise InvalidInput(
                f"{label} {side} is not usable",
                where=label,
                hint=f"use a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE}, e.g. 1152*896",
            )
    if not 1 <= request.steps <= MAX_STEPS:
        raise InvalidInput(
            f"steps {request.steps} is out of range", where="steps", hint=f"use 1 to {MAX_STEPS}"
        )
    if request.cfg < 1.0:
        raise InvalidInput(
            f"cfg {request.cfg} is below 1.0", where="cfg", hint="use 1.0 to 30 (Fooocus default 4.0)"
        )
