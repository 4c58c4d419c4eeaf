"""``fooocusd styles [--search TEXT]``: list the styles a job may name, as a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fooocusd.engine.styles import EXPANSION_STYLE, RANDOM_STYLE, StyleLibrary, load_styles
from fooocusd.settings import LoadedSettings

PSEUDO_STYLE_ROWS: tuple[tuple[str, str], ...] = (
    (EXPANSION_STYLE, "(switch) extends the prompt with prompt expansion; not a template"),
    (RANDOM_STYLE, "(switch) replaced by one style picked per image from the image's seed"),
)
_MIN_WIDTH = 140


def styles(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """Print name, category, positive template and negative of each (matching) style.

    Exit status 0 when something is listed, 1 when the search matched nothing.
    """
    library = load_styles(user_style_dirs(args, loaded))
    search = (getattr(args, "search", None) or "").strip()
    console = Console(width=max(Console().width, _MIN_WIDTH))
    table = styles_table(library, search)
    if not table.row_count:
        close = library.close_matches(search)
        guess = (" — did you mean " + " or ".join(f"'{name}'" for name in close) + "?") if close else ""
        console.print(f"no style matches '{escape(search)}'{escape(guess)}")
        return 1
    console.print(table)
    return 0


def styles_table(library: StyleLibrary, search: str = "") -> Table:
    """The table for ``library``, limited to styles matching ``search`` (all when empty)."""
    title = f"styles matching '{search}'" if search else f"{len(library)} styles"
    table = Table("name", "category", "positive", "negative", title=escape(title), show_lines=True)
    words = search.casefold().split()
    for name, what in PSEUDO_STYLE_ROWS:
        if all(word in f"{name} {what}".casefold() for word in words):
            table.add_row(name, "Switch", escape(what), "")
    for style in library.search(search):
        label = style.name
        if style.aliases:
            label += "\n(also: " + ", ".join(style.aliases) + ")"
        positive = style.prompt or "(negative only)"
        table.add_row(escape(label), escape(style.category), escape(positive), escape(style.negative))
    return table


def user_style_dirs(args: argparse.Namespace, loaded: LoadedSettings) -> list[Path]:
    """``paths.styles`` from the configuration (once that setting exists), then any ``--styles-dir``."""
    dirs: list[Path] = []
    configured = getattr(loaded.settings.paths, "styles", None)
    if configured:
        dirs.append(Path(configured).expanduser())
    dirs.extend(Path(path).expanduser() for path in getattr(args, "styles_dir", None) or [])
    return dirs
