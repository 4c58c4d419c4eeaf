"""The style library, and how selected styles turn one prompt into CLIP "workloads".

Where styles come from, in this order (a later definition replaces an earlier one with the
same normalised name, keeping its place in the list):

1. the bundled files in ``fooocusd/data/styles/`` (our own TOML; one file per category);
2. each user folder, in the order given; inside a folder, files in name order.

So a user style overrides a bundled style of the same name. (Fooocus does the opposite and
lets its built-ins win; we let the operator's own file win because they put it there on purpose.)

A user folder may hold our TOML format or Fooocus-format JSON arrays
(``[{"name": ..., "prompt": ..., "negative_prompt": ...}]``), so existing collections work as
they are. Other files (sample images, notes) and sub-folders are ignored.

Names are matched after normalisation, case-insensitively: ``-`` and ``_`` become spaces, each
word is title-cased, then ``3d`` → ``3D``, ``Sai`` → ``SAI``, ``Mre`` → ``MRE``, ``(s`` → ``(S``
(Fooocus's rule, plus ``_``). ``sai-3d-model``, ``SAI 3D model`` and ``sai_3d_model`` all name the
same style. TOML styles are shown as their file spells them; JSON styles are shown normalised,
as Fooocus shows them.

Two names are not styles but switches: ``Fooocus V2`` turns on prompt expansion and
``Random Style`` is replaced, for each image, by a style picked with that image's rng.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fooocusd
from fooocusd.errors import ConfigError, InvalidInput

EXPANSION_STYLE = "Fooocus V2"
RANDOM_STYLE = "Random Style"
PSEUDO_STYLES: tuple[str, ...] = (EXPANSION_STYLE, RANDOM_STYLE)
PROMPT_PLACEHOLDER = "{prompt}"
STYLE_SUFFIXES: tuple[str, ...] = (".toml", ".json")

_TOML_STYLE_KEYS = ("name", "prompt", "negative", "aliases")
_TOML_FILE_KEYS = ("category", "style")
_TOML_ENTRY_HEADER = re.compile(r"^\s*\[\[\s*(?:style|\"style\"|'style')\s*\]\]")
_TOML_ERROR_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")
_WORD_FIXES = {"Sai": "SAI", "Mre": "MRE"}


def normalise_style_name(raw: str) -> str:
    """Fooocus's display form of a style name: ``sai-3d-model`` → ``SAI 3D Model``."""
    words = raw.replace("-", " ").replace("_", " ").split()
    titled = [word[:1].upper() + word[1:].lower() for word in words]
    text = " ".join(_WORD_FIXES.get(word, word) for word in titled)
    return text.replace("3d", "3D").replace("(s", "(S")


def style_key(raw: str) -> str:
    """The lookup key: the normalised name, case-folded."""
    return normalise_style_name(raw).casefold()


def clean_prompt_line(line: str) -> str:
    """Collapse runs of spaces and trim spaces, commas and full stops from both ends (as Fooocus does)."""
    return re.sub(r" {2,}", " ", line).strip(",. \r\n\t")


def split_prompt_lines(text: str) -> list[str]:
    """Cleaned, non-empty lines of a prompt box."""
    return [cleaned for line in text.splitlines() if (cleaned := clean_prompt_line(line))]


@dataclass(frozen=True)
class Style:
    """One style. ``prompt`` holds ``{prompt}`` where the user's main line goes."""

    name: str
    category: str
    prompt: str
    negative: str
    source: Path | None = None
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return style_key(self.name)

    @property
    def has_placeholder(self) -> bool:
        return PROMPT_PLACEHOLDER in self.prompt

    @property
    def is_negative_only(self) -> bool:
        return not self.prompt.strip()

    def positive_lines(self, task_prompt: str) -> list[str]:
        return self.prompt.replace(PROMPT_PLACEHOLDER, task_prompt).splitlines()

    def negative_lines(self) -> list[str]:
        return self.negative.splitlines()


class StyleLibrary:
    """Every known style, looked up by normalised name (or by an alias such as a Fooocus name)."""

    def __init__(self, styles: Iterable[Style] = ()) -> None:
        self._by_key: dict[str, Style] = {}
        for style in styles:
            self.add(style)

    def add(self, style: Style) -> None:
        """Add a style, or replace the one with the same normalised name (keeping its position)."""
        self._by_key[style.key] = style

    @property
    def styles(self) -> tuple[Style, ...]:
        """Real styles (not pseudo-styles), in load order."""
        return tuple(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Style]:
        return iter(self.styles)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def names(self) -> list[str]:
        return [style.name for style in self._by_key.values()]

    def categories(self) -> list[str]:
        return sorted({style.category for style in self._by_key.values()})

    def get(self, name: str) -> Style:
        """The style called ``name``. Unknown → ``InvalidInput`` with the closest names."""
        style = self._find(name)
        if style is None:
            raise self._unknown([name])
        return style

    def canonical_names(self, names: Sequence[str]) -> list[str]:
        """Check a job's style list up front: each name in its display spelling, pseudo-styles included.

        Every unknown name is reported in one ``InvalidInput``.
        """
        pseudo = {style_key(name): name for name in PSEUDO_STYLES}
        result: list[str] = []
        unknown: list[str] = []
        for name in names:
            if style_key(name) in pseudo:
                result.append(pseudo[style_key(name)])
            elif (style := self._find(name)) is not None:
                result.append(style.name)
            else:
                unknown.append(name)
        if unknown:
            raise self._unknown(unknown)
        return result

    def search(self, text: str) -> list[Style]:
        """Styles whose name, alias, category or templates contain every word of ``text``.

        Case-insensitive; an exact name comes first, then name hits, category hits and template
        hits, each group in load order. An empty text returns every style.
        """
        words = text.casefold().split()
        ranked = [
            (rank, position, style)
            for position, style in enumerate(self._by_key.values())
            if (rank := _search_rank(style, words)) is not None
        ]
        return [style for _, _, style in sorted(ranked, key=lambda item: item[:2])]

    def close_matches(self, name: str, limit: int = 3) -> list[str]:
        """Known names (aliases and pseudo-styles included) that look like ``name``."""
        display = {style_key(pseudo): pseudo for pseudo in PSEUDO_STYLES}
        for style in self._by_key.values():
            display[style.key] = style.name
            for alias in style.aliases:
                display.setdefault(style_key(alias), alias)
        wanted = style_key(name)
        keys = difflib.get_close_matches(wanted, list(display), n=limit, cutoff=0.6)
        if not keys and wanted:
            keys = [key for key in display if wanted in key][:limit]
        return [display[key] for key in keys]

    def _find(self, name: str) -> Style | None:
        key = style_key(name)
        if key in self._by_key:
            return self._by_key[key]
        for style in self._by_key.values():
            if any(style_key(alias) == key for alias in style.aliases):
                return style
        return None

    def _unknown(self, names: Sequence[str]) -> InvalidInput:
        parts = []
        for name in names:
            close = self.close_matches(name)
            guess = (" (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)") if close else ""
            parts.append(f"'{name}'{guess}")
        noun = "style" if len(names) == 1 else "styles"
        return InvalidInput(
            f"unknown {noun}: " + ", ".join(parts),
            where="styles",
            hint="run 'fooocusd styles --search WORD' to list styles, fix the spelling, "
            "or add your own style file to the styles folder",
        )


def _search_rank(style: Style, words: Sequence[str]) -> int | None:
    """0: the whole name or an alias; 1: words in the name; 2: in the category; 3: in the templates."""
    own_names = (style.name, *style.aliases)
    names = " ".join((*own_names, *(normalise_style_name(name) for name in own_names))).casefold()
    category = style.category.casefold()
    everything = " ".join((names, category, style.prompt.casefold(), style.negative.casefold()))
    if not all(word in everything for word in words):
        return None
    if words and style_key(" ".join(words)) in {style_key(name) for name in own_names}:
        return 0
    if all(word in names for word in words):
        return 1
    return 2 if all(word in category for word in words) else 3


def bundled_styles_dir() -> Path:
    return Path(fooocusd.__file__).resolve().parent / "data" / "styles"


def load_styles(user_dirs: Sequence[Path] = ()) -> StyleLibrary:
    """The bundled styles, then each user folder's (user styles win on a name clash).

    A missing user folder, or a broken file anywhere, is a ``ConfigError`` naming the file (and
    the line where one is known).
    """
    library = StyleLibrary()
    for path in style_files(bundled_styles_dir()):
        for style in read_style_file(path):
            library.add(style)
    for directory in user_dirs:
        directory = directory.expanduser()
        if not directory.is_dir():
            raise ConfigError(
                f"the styles folder {directory} does not exist or is not a folder",
                where=str(directory),
                hint="create it, or remove it from the configuration",
            )
        for path in style_files(directory):
            for style in read_style_file(path):
                library.add(style)
    return library


def style_files(directory: Path) -> list[Path]:
    """The ``.toml`` and ``.json`` files directly in ``directory``, in name order; hidden files skipped."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix.lower() in STYLE_SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def read_style_file(path: Path) -> list[Style]:
    """Parse one style file (by suffix). Raises ``ConfigError`` naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read style file {path}: {exc}", where=str(path)) from exc
    if path.suffix.lower() == ".json":
        return _parse_fooocus_json(text, path)
    return _parse_toml(text, path)


def category_from_file(path: Path) -> str:
    """``graphic-design.toml`` → ``Graphic Design``; ``3d.toml`` → ``3D``."""
    return normalise_style_name(path.stem)


def _parse_toml(text: str, path: Path) -> list[Style]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_ERROR_LINE.search(str(exc))
        where = f"{path}, line {found.group(1)}" if found else str(path)
        raise ConfigError(
            f"style file {path} is not valid TOML: {exc}",
            where=where,
            hint='fix the syntax there; a style looks like [[style]] name = "..." '
            'prompt = "... {prompt} ..." negative = "..."',
        ) from exc
    for key in data:
        if key not in _TOML_FILE_KEYS:
            raise ConfigError(
                f"unknown key '{key}' at the top of style file {path}{_did_you_mean(key, _TOML_FILE_KEYS)}",
                where=str(path),
                hint='a style file holds an optional category = "..." and [[style]] tables',
            )
    category = data.get("category", category_from_file(path))
    entries = data.get("style", [])
    if not isinstance(category, str) or not category.strip():
        raise ConfigError(f"style file {path}: 'category' must be non-empty text", where=str(path))
    if not isinstance(entries, list):
        raise ConfigError(
            f"style file {path}: 'style' must be a list of tables, written as [[style]]", where=str(path)
        )
    header_lines = [
        number for number, line in enumerate(text.splitlines(), start=1) if _TOML_ENTRY_HEADER.match(line)
    ]
    lines = header_lines if len(header_lines) == len(entries) else [None] * len(entries)
    seen: dict[str, str] = {}
    styles = []
    for index, (entry, line) in enumerate(zip(entries, lines, strict=True), start=1):
        where = f"{path}, line {line}" if line else f"{path}, style #{index}"
        style = _toml_style(entry, category.strip(), path, where)
        _refuse_duplicates(style, seen, where)
        styles.append(style)
    return styles


def _toml_style(entry: Any, category: str, path: Path, where: str) -> Style:
    if not isinstance(entry, dict):
        raise ConfigError(f"style entry is not a table ({where})", where=where)
    for key in entry:
        if key not in _TOML_STYLE_KEYS:
            raise ConfigError(
                f"unknown key '{key}' in a style ({where}){_did_you_mean(key, _TOML_STYLE_KEYS)}",
                where=where,
                hint="a style may set: " + ", ".join(_TOML_STYLE_KEYS),
            )
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise ConfigError(f"'aliases' must be a list of names ({where})", where=where)
    return _checked_style(
        name=entry.get("name"),
        prompt=entry.get("prompt", ""),
        negative=entry.get("negative", ""),
        category=category,
        path=path,
        where=where,
        aliases=tuple(alias.strip() for alias in aliases),
        display_normalised=False,
    )


def _parse_fooocus_json(text: str, path: Path) -> list[Style]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"style file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            where=f"{path}, line {exc.lineno}",
            hint='a Fooocus style file is a list: [{"name": "...", "prompt": "... {prompt} ...", '
            '"negative_prompt": "..."}]',
        ) from exc
    if not isinstance(data, list):
        raise ConfigError(
            f"style file {path} must hold a JSON list of styles, not a {type(data).__name__}",
            where=str(path),
            hint='write it as [{"name": "...", "prompt": "...", "negative_prompt": "..."}]',
        )
    category = category_from_file(path)
    seen: dict[str, str] = {}
    styles = []
    for entry, line in zip(data, _json_entry_lines(text), strict=True):
        where = f"{path}, line {line}"
        if not isinstance(entry, dict):
            raise ConfigError(f"a style must be a JSON object ({where})", where=where)
        style = _checked_style(
            name=entry.get("name"),
            prompt=entry.get("prompt", ""),
            negative=entry.get("negative_prompt", ""),
            category=category,
            path=path,
            where=where,
            aliases=(),
            display_normalised=True,
        )
        _refuse_duplicates(style, seen, where)
        styles.append(style)
    return styles


def _json_entry_lines(text: str) -> list[int]:
    """The line each element of a top-level JSON array starts on (the text is known to be valid)."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"[ \t\n\r]*")
    index = whitespace.match(text, 0).end() + 1  # type: ignore[union-attr]
    lines: list[int] = []
    while True:
        index = whitespace.match(text, index).end()  # type: ignore[union-attr]
        if text[index] == "]":
            return lines
        lines.append(text.count("\n", 0, index) + 1)
        _, index = decoder.raw_decode(text, index)
        index = whitespace.match(text, index).end()  # type: ignore[union-attr]
        if text[index] == ",":
            index += 1


def _checked_style(
    *,
    name: object,
    prompt: object,
    negative: object,
    category: str,
    path: Path,
    where: str,
    aliases: tuple[str, ...],
    display_normalised: bool,
) -> Style:
    if not isinstance(name, str) or not normalise_style_name(name):
        raise ConfigError(f"a style has no name ({where})", where=where, hint='add name = "..."')
    if not isinstance(prompt, str) or not isinstance(negative, str):
        label = "prompt" if not isinstance(prompt, str) else "negative"
        raise ConfigError(f"style '{name}': '{label}' must be text ({where})", where=where)
    if style_key(name) in {style_key(pseudo) for pseudo in PSEUDO_STYLES}:
        raise ConfigError(
            f"'{name}' is a built-in switch, not a style, and cannot be redefined ({where})",
            where=where,
            hint="give the style another name",
        )
    if not prompt.strip() and not negative.strip():
        raise ConfigError(
            f"style '{name}' has neither a prompt nor a negative, so it would do nothing ({where})",
            where=where,
            hint='add prompt = "... {prompt} ..." and/or negative = "..."',
        )
    display = normalise_style_name(name) if display_normalised else " ".join(name.split())
    return Style(display, category, prompt.strip("\n"), negative.strip("\n"), path, aliases)


def _refuse_duplicates(style: Style, seen: dict[str, str], where: str) -> None:
    for key in (style.key, *(style_key(alias) for alias in style.aliases)):
        if key in seen:
            raise ConfigError(
                f"the name '{style.name}' (or one of its aliases) is already used by '{seen[key]}' "
                f"in the same file ({where})",
                where=where,
                hint="names are compared after normalisation: case, '-' and '_' do not count",
            )
        seen[key] = style.name


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Workloads:
    """What the text encoders receive for one image: each string is encoded on its own.

    ``expansion`` says that prompt expansion ("Fooocus V2") should extend ``expansion_prompt``
    and add the result as the last positive workload.
    """

    positive: list[str]
    negative: list[str]
    styles_applied: list[str]
    expansion: bool
    expansion_prompt: str = ""


def compose_workloads(
    prompt: str,
    extra_prompts: Sequence[str],
    negative: str,
    style_names: Sequence[str],
    library: StyleLibrary,
    rng: random.Random,
) -> Workloads:
    """Combine prompt, styles and negatives into workloads, in Fooocus's order, for one image.

    ``prompt`` and ``negative`` are the two prompt boxes: their first non-empty line is the main
    line; their other lines, and every line of ``extra_prompts``, are extra workloads. ``rng`` is
    the image's own ``random.Random(seed)`` and picks any ``Random Style``.

    Positive: [main line, only when no selected style has ``{prompt}``] + each style's lines +
    extra lines. Negative: each style's negative lines + the user's main negative line + extra
    negative lines. Empty workloads are dropped; if nothing is left, the single workload is the
    (possibly empty) main line, as Fooocus does.
    """
    positive_lines = split_prompt_lines(prompt)
    task_prompt = positive_lines[0] if positive_lines else ""
    extra_lines = positive_lines[1:]
    for extra in extra_prompts:
        extra_lines.extend(split_prompt_lines(extra))
    negative_lines = split_prompt_lines(negative)
    task_negative = negative_lines[0] if negative_lines else ""

    expansion = False
    applied: list[str] = []
    style_positive: list[str] = []
    style_negative: list[str] = []
    placeholder_used = False
    for name in style_names:
        key = style_key(name)
        if key == style_key(EXPANSION_STYLE):
            expansion = True
            continue
        if key == style_key(RANDOM_STYLE):
            if not library.styles:
                raise InvalidInput("'Random Style' was asked for but no styles are loaded", where="styles")
            style = rng.choice(library.styles)
        else:
            style = library.get(name)
        applied.append(style.name)
        placeholder_used = placeholder_used or style.has_placeholder
        style_positive.extend(style.positive_lines(task_prompt))
        style_negative.extend(style.negative_lines())

    head = [] if placeholder_used else [task_prompt]
    positive = _non_empty([*head, *style_positive, *extra_lines]) or [task_prompt]
    negative_workloads = _non_empty([*style_negative, task_negative, *negative_lines[1:]]) or [task_negative]
    expansion = expansion and bool(task_prompt)  # an image-prompt-only job is not expanded
    return Workloads(
        positive=positive,
        negative=negative_workloads,
        styles_applied=applied,
        expansion=expansion,
        expansion_prompt=task_prompt if expansion else "",
    )


def _non_empty(lines: Iterable[str]) -> list[str]:
    return [stripped for line in lines if (stripped := line.strip())]
