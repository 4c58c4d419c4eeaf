"""``{a|b|c}`` random choices in prompt text, as ComfyUI and A1111's Dynamic Prompts write them.

- ``{red|green|blue}`` becomes one of the three, drawn from the image's ``random.Random``.
- ``{0.5::red|green}`` gives an option a relative weight (default 1).
- ``{2$$red|green|blue}`` picks two different options, joined by ``", "``; ``{1-3$$...}`` picks
  one to three, ``{2-$$...}`` two to all of them, and ``{2$$ and $$...}`` joins them with `` and ``.
- Braces without a ``|`` are left alone: ``{word}`` is NovelAI's emphasis, and ``{prompt}`` is a
  style template's placeholder.

Only the innermost choices are made per call; ``prompt_syntax.apply_wildcards`` calls this level
by level with the wildcards, so a choice may hold a ``__wildcard__`` and a wildcard line a choice.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

CHOICE_PATTERN = re.compile(r"\{([^{}]*\|[^{}]*)\}")
"""An innermost pair of braces with at least one ``|`` inside."""

_QUANTITY = re.compile(r"^\s*(?P<low>\d+)?\s*(?P<dash>-)?\s*(?P<high>\d+)?\s*\$\$(?:(?P<joiner>[^$]*)\$\$)?")
_WEIGHT = re.compile(r"^\s*(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*::")


@dataclass(frozen=True)
class _Choice:
    options: tuple[str, ...]
    weights: tuple[float, ...]
    low: int
    high: int
    joiner: str


def has_choices(text: str) -> bool:
    return CHOICE_PATTERN.search(text) is not None


def apply_choices(text: str, rng: random.Random) -> str:
    """Replace each innermost ``{...|...}`` by its pick, left to right. A pick of nothing between
    two spaces takes one of them with it, so ``a {red|} car`` gives ``a car``."""
    parts: list[str] = []
    end = 0
    for match in CHOICE_PATTERN.finditer(text):
        pick = _pick(_parse(match.group(1)), rng)
        before = text[end : match.start()]
        if not pick and before.endswith(" ") and text[match.end() : match.end() + 1] == " ":
            before = before[:-1]
        parts += [before, pick]
        end = match.end()
    return "".join(parts) + text[end:] if parts else text


def _parse(body: str) -> _Choice:
    low = high = 1
    joiner = ", "
    quantity = _QUANTITY.match(body)
    if quantity is not None and (quantity["low"] or quantity["high"]):
        body = body[quantity.end() :]
    else:
        quantity = None
    options, weights = [], []
    for option in body.split("|"):
        weight = _WEIGHT.match(option)
        weights.append(float(weight["weight"]) if weight else 1.0)
        options.append((option[weight.end() :] if weight else option).strip())
    if quantity is not None:
        low = int(quantity["low"]) if quantity["low"] else 1
        high = int(quantity["high"]) if quantity["high"] else (len(options) if quantity["dash"] else low)
        if quantity["joiner"] is not None:
            joiner = quantity["joiner"]
    high = max(0, min(high, len(options)))
    return _Choice(tuple(options), tuple(weights), min(low, high), high, joiner)


def _pick(choice: _Choice, rng: random.Random) -> str:
    count = choice.high if choice.low == choice.high else rng.randint(choice.low, choice.high)
    options, weights = list(choice.options), list(choice.weights)
    picks: list[str] = []
    for _ in range(count):
        # Every weight 0 would make random.choices fail; pick evenly among what is left instead.
        index = rng.choices(range(len(options)), weights=weights if any(weights) else None)[0]
        picks.append(options.pop(index))
        weights.pop(index)
    return choice.joiner.join(pick for pick in picks if pick)
