"""``fooocusd wildcards``: the ``__name__`` wildcards a prompt may use, as a table."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fooocusd.engine.prompt_syntax import WildcardLibrary
from fooocusd.settings import LoadedSettings

_SAMPLE_LINES = 4
_MIN_WIDTH = 120


def wildcards(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """Print each wildcard's name, line count, first lines and file: the user's, then the bundled."""
    folder = loaded.settings.paths.resolved().wildcards
    library = WildcardLibrary(folder, warn=False)
    if getattr(args, "json", False):
        rows = [
            {"name": name, "lines": list(library.lines(name)), "file": str(library.path_of(name))}
            for name in library.names
        ]
        print(json.dumps({"folder": str(folder), "wildcards": rows}, indent=2))
        return 0
    console = Console(width=max(Console().width, _MIN_WIDTH))
    where = f"{folder}" + ("" if folder is not None and folder.is_dir() else " (not there yet)")
    console.print(f"your wildcards folder: {escape(where)}; a file there replaces a bundled one of its name")
    table = Table(title=f"{len(library.names)} wildcards")
    for column in ("name", "lines", "first lines", "file"):
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "lines"))
    for name in library.names:
        lines = library.lines(name)
        sample = ", ".join(lines[:_SAMPLE_LINES]) + (", …" if len(lines) > _SAMPLE_LINES else "")
        table.add_row(
            escape(f"__{name}__"), str(len(lines)), escape(sample), escape(str(library.path_of(name)))
        )
    console.print(table)
    return 0
