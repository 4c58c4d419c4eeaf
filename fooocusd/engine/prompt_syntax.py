"""Prompt text pre-processing that happens before styles: inline LoRA tags, wildcards, ``{a|b}``
choices and arrays; and finding the ``embedding:name`` references that ``embeddings.py`` rewrites.

Order, per image:
1. ``__name__`` wildcards and ``{a|b}`` choices are expanded in every prompt line, drawing from
   the image's ``random.Random`` (a wildcard read in order takes line ``image_index % len``).
2. ``[[a, b, c]]`` arrays on the main positive line pick an element by image index.
3. ``<lora:name:weight>`` tags are parsed from the result and stripped (``loras.with_inline_loras``),
   so a tag a wildcard line or a choice brings is that image's own LoRA. Fooocus parses them
   once per job, before wildcards.

Everything here is pure text; nothing touches the model.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from fooocusd.engine.prompt_variants import CHOICE_PATTERN, apply_choices, has_choices
from fooocusd.errors import InvalidInput, suggest

WILDCARD_PATTERN = re.compile(r"__([\w-]+)__")
ARRAY_PATTERN = re.compile(r"\[\[(.*?)\]\]")
INLINE_LORA_PATTERN = re.compile(r"<lora:([^:<>]+?)(?::([+-]?(?:\d+(?:\.\d*)?|\.\d+)))?>")
EMBEDDING_REFERENCE = re.compile(r"embedding:([\w\-./\\]+)", re.IGNORECASE)
"""``embedding:name``; the name may carry subfolders and a suffix, and ends at a space, comma or ``:``."""

MAX_WILDCARD_DEPTH = 64
# A wildcard file that names itself twice doubles the text at every level; stop well before that hurts.
MAX_EXPANDED_CHARS = 50_000


@dataclass(frozen=True)
class InlineLora:
    """One ``<lora:name:weight>`` tag as written (``tag``), with its parsed parts."""

    name: str
    weight: float
    tag: str


@dataclass(frozen=True)
class ExpandedPrompts:
    """The prompt boxes of one image after wildcards and arrays."""

    prompt: str
    extra_prompts: tuple[str, ...]
    negative: str


# -- inline LoRA -------------------------------------------------------------------------------


def parse_inline_loras(text: str) -> tuple[str, list[InlineLora]]:
    """(``text`` without its LoRA tags, tidied; the tags in order). A missing weight means 1.0."""
    loras = [
        InlineLora(name=match.group(1).strip(), weight=float(match.group(2) or 1.0), tag=match.group(0))
        for match in INLINE_LORA_PATTERN.finditer(text)
    ]
    if not loras:
        return text, []
    return tidy_prompt(INLINE_LORA_PATTERN.sub(" ", text)), loras


def loras_from_tags(
    listed: Sequence[tuple[str, float]], tags: Sequence[InlineLora]
) -> list[tuple[str, float]]:
    """The (name, weight) of each tag whose LoRA ``listed`` does not name yet, as in Fooocus: a
    name already listed, or tagged before, is skipped (names compared without case)."""
    seen = {name.strip().lower() for name, _ in listed}
    added: list[tuple[str, float]] = []
    for tag in tags:
        if tag.name.lower() not in seen:
            seen.add(tag.name.lower())
            added.append((tag.name, tag.weight))
    return added


def embedding_names(text: str) -> list[str]:
    """The embedding names ``text`` refers to, in order, without the trailing dots of a sentence."""
    return [match.group(1).rstrip(".") for match in EMBEDDING_REFERENCE.finditer(text)]


def tidy_prompt(text: str) -> str:
    """Collapse runs of spaces and of commas (with the spaces around them); trim both ends."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s*,(?:\s*,)*\s*", ", ", text)
    return text.strip(" \t,")


# -- wildcards ---------------------------------------------------------------------------------


BUNDLED_WILDCARDS = Path(__file__).resolve().parent.parent / "data" / "wildcards"
"""fooocusd's own lists (``__color__``, ``__animal__``, ``__lighting__``...), after the user's."""


class WildcardLibrary:
    """The ``*.txt`` files under a folder (subfolders too), then the bundled ones, by file stem;
    read on first use.

    A user's file replaces the bundled one of the same name. When two of the user's files share a
    stem, the first in sorted path order wins, so the choice is stable.
    """

    def __init__(
        self, folder: Path | None, *, warn: bool = True, bundled: Path | None = BUNDLED_WILDCARDS
    ) -> None:
        self.folder = folder
        self.warn = warn
        """Log a warning for each wildcard that has no lines (off for a dry run of a job's prompts)."""
        self.unresolved: dict[str, str] = {}
        """Each wildcard that became its bare word, and why (``why_empty``), in the order met."""
        self._paths: dict[str, Path] = {}
        for root in (folder, bundled):
            if root is not None and root.is_dir():
                for path in sorted(root.rglob("*.txt")):
                    if path.is_file():
                        self._paths.setdefault(path.stem, path)
        self._lines: dict[str, tuple[str, ...]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._paths)

    def path_of(self, name: str) -> Path | None:
        """The file wildcard ``name`` is read from, or None when there is none."""
        return self._paths.get(name)

    def lines(self, name: str) -> tuple[str, ...]:
        """The non-empty lines of wildcard ``name``; empty when there is no such file."""
        if name not in self._lines:
            path = self._paths.get(name)
            self._lines[name] = _read_lines(path) if path is not None else ()
        return self._lines[name]

    def warn_empty(self, name: str) -> None:
        """Note, and log once per library (one job), that ``name`` has no lines, and why."""
        if name not in self.unresolved:
            self.unresolved[name] = self.why_empty(name)
            if self.warn:
                logger.warning(
                    "wildcard __{}__ becomes the bare word {!r}: {}", name, name, self.unresolved[name]
                )

    def why_empty(self, name: str) -> str:
        """Why ``lines(name)`` is empty: an empty file, or no file (and the names closest to it)."""
        path = self._paths.get(name)
        if path is not None:
            return f"{path} has no lines"
        where = f"in {self.folder}" if self.folder is not None else "(paths.wildcards is not set)"
        return f"there is no {name}.txt {where} or among the bundled wildcards{suggest(name, self.names)}"


def _read_lines(path: Path) -> tuple[str, ...]:
    """The file's non-empty lines. Read as job files are: UTF-8 with or without a BOM, or UTF-16
    with one (Notepad's "Unicode"); a file in another encoding is said and treated as empty, rather
    than put into prompts as replacement characters."""
    from fooocusd.jobs.loader import decode_job_text

    try:
        text = decode_job_text(path.read_bytes(), path.name)
    except OSError as exc:
        logger.warning("wildcard file {} cannot be read ({}); treated as empty", path, exc)
        return ()
    except InvalidInput as exc:
        logger.warning("wildcard file {}: {}; treated as empty ({})", path, exc.message, exc.hint)
        return ()
    return tuple(stripped for line in text.splitlines() if (stripped := line.strip()))


def apply_wildcards(
    text: str,
    library: WildcardLibrary,
    rng: random.Random,
    *,
    image_index: int = 0,
    in_order: bool = False,
) -> str:
    """Replace each ``__name__`` by a line of ``name.txt``, and each innermost ``{a|b}`` by a pick
    (``prompt_variants``), level by level, up to 64 levels deep.

    Each occurrence is replaced on its own (two ``__color__`` may differ). A missing or empty file
    leaves the bare name. Past the depth limit (a file that names itself, directly or not) or the
    size limit, the job is refused with ``InvalidInput``: a runaway wildcard is a mistake to fix,
    not something to render half-expanded.
    """
    for _ in range(MAX_WILDCARD_DEPTH):
        names = WILDCARD_PATTERN.findall(text)
        if not names and not has_choices(text):
            return text
        for name in names:
            if f"__{name}__" not in text:  # a missing name already replaced everywhere
                continue
            lines = library.lines(name)
            if not lines:
                library.warn_empty(name)
                text = text.replace(f"__{name}__", name)
                continue
            word = lines[image_index % len(lines)] if in_order else rng.choice(lines)
            text = text.replace(f"__{name}__", word, 1)
        text = apply_choices(text, rng)
        if len(text) > MAX_EXPANDED_CHARS:
            raise InvalidInput(
                f"wildcards grew the prompt past {MAX_EXPANDED_CHARS:,} characters",
                where="prompt",
                hint="a wildcard file probably names itself more than once per line (e.g. "
                "'__x__ and __x__' in x.txt); fix that file",
            )
    leftover = WILDCARD_PATTERN.search(text) or CHOICE_PATTERN.search(text)
    if leftover:
        raise InvalidInput(
            f"wildcards are nested more than {MAX_WILDCARD_DEPTH} levels deep, still at {leftover.group(0)} "
            "(a wildcard file that names itself, directly or through others?)",
            where="prompt",
            hint=f"fix the wildcard files so that {leftover.group(0)} does not lead back to itself",
        )
    return text


# -- arrays ------------------------------------------------------------------------------------


def apply_arrays(text: str, image_index: int) -> str:
    """Replace each ``[[a, b, c]]`` by one element, counting like a mixed-radix number.

    The arrays together have ``product(lengths)`` combinations; image ``i`` takes combination
    ``i % product``, with the first array changing fastest. Elements are split on ``,`` and
    trimmed of surrounding spaces (CLIP ignores them anyway).
    """
    arrays = [match.split(",") for match in ARRAY_PATTERN.findall(text)]
    if not arrays:
        return text
    counter = image_index % math.prod(len(elements) for elements in arrays)
    picks: list[str] = []
    for elements in arrays:
        counter, digit = divmod(counter, len(elements))
        picks.append(elements[digit].strip())
    remaining = iter(picks)
    return ARRAY_PATTERN.sub(lambda _match: next(remaining), text)


# -- per image ---------------------------------------------------------------------------------


def expand_prompts(
    prompt: str,
    extra_prompts: Sequence[str],
    negative: str,
    *,
    wildcards: WildcardLibrary,
    rng: random.Random,
    image_index: int,
    wildcards_in_order: bool = False,
) -> ExpandedPrompts:
    """Wildcards in every line, then arrays on the main (first non-empty) positive line.

    Draw order, which fixes what a seed gives: main positive line, main negative line, the other
    positive lines (rest of ``prompt``, then ``extra_prompts``), the other negative lines.
    """

    def expand(line: str) -> str:
        return apply_wildcards(line, wildcards, rng, image_index=image_index, in_order=wildcards_in_order)

    positive_lines = prompt.splitlines()
    negative_lines = negative.splitlines()
    extra_lines = [extra.splitlines() for extra in extra_prompts]
    positive_main = _main_index(positive_lines)
    negative_main = _main_index(negative_lines)
    if positive_main is not None:
        positive_lines[positive_main] = expand(positive_lines[positive_main])
    if negative_main is not None:
        negative_lines[negative_main] = expand(negative_lines[negative_main])
    for lines, main in ((positive_lines, positive_main), *((lines, None) for lines in extra_lines)):
        for index, line in enumerate(lines):
            if index != main:
                lines[index] = expand(line)
    for index, line in enumerate(negative_lines):
        if index != negative_main:
            negative_lines[index] = expand(line)
    if positive_main is not None:
        positive_lines[positive_main] = apply_arrays(positive_lines[positive_main], image_index)
    return ExpandedPrompts(
        prompt="\n".join(positive_lines),
        extra_prompts=tuple("\n".join(lines) for lines in extra_lines),
        negative="\n".join(negative_lines),
    )


def _main_index(lines: Sequence[str]) -> int | None:
    return next((index for index, line in enumerate(lines) if line.strip()), None)
