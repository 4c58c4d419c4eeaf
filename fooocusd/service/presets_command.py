"""``fooocusd presets``: the presets a job may name (or an inbox subfolder may route to), as a table."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fooocusd.jobs.performance import fetch_name
from fooocusd.jobs.preset_check import missing_default_files
from fooocusd.jobs.presets import Preset, load_all_presets, preset_search_dirs
from fooocusd.settings import LoadedSettings

_MIN_WIDTH = 140


def presets(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """Print each preset's name, what it is for, what it sets and whether its model files are here."""
    settings = loaded.settings
    paths = settings.paths.resolved()
    found = load_all_presets(preset_search_dirs(paths.presets))
    lacks = {
        name: missing_default_files(
            preset, settings.generation.performance, paths.models, settings.engine.model
        )
        for name, preset in found.items()
    }
    if getattr(args, "json", False):
        rows = [
            {
                "name": name,
                "description": preset.description,
                "sets": preset.model_dump(
                    mode="json", exclude={"name", "path", "description"}, exclude_none=True
                ),
                "lacks": [fetch_name(item.name) for item in lacks[name]],
                "file": str(preset.path or ""),
            }
            for name, preset in sorted(found.items(), key=lambda item: item[0].lower())
        ]
        print(json.dumps({"default": settings.generation.preset, "presets": rows}, indent=2))
        return 0
    console = Console(width=max(Console().width, _MIN_WIDTH))
    console.print(
        f"a job names one with 'preset: NAME'; a file dropped into {escape(str(paths.inbox))}/NAME/ uses it "
        f"too; without either, generation.preset ('{escape(settings.generation.preset)}') applies"
    )
    table = Table(title=f"{len(found)} presets", show_lines=True)
    for column in ("name", "description", "sets", "model files", "file"):
        table.add_column(column, overflow="fold", no_wrap=column == "name")
    for name in sorted(found, key=str.lower):
        preset = found[name]
        missing = lacks[name]
        files = "ready" if not missing else "lacks " + ", ".join(fetch_name(item.name) for item in missing)
        table.add_row(
            escape(name),
            escape(preset.description),
            escape(_what_it_sets(preset)),
            escape(files),
            escape(str(preset.path or "")),
        )
    console.print(table)
    if any(lacks.values()):
        console.print("`fooocusd models fetch --preset PRESET` downloads the files a preset lacks")
    return 0


def _what_it_sets(preset: Preset) -> str:
    shown = preset.model_dump(exclude={"name", "path", "description", "negative"}, exclude_none=True)
    parts = []
    for key, value in shown.items():
        if key == "loras":
            value = ", ".join(f"{lora['name']} {lora['weight']:g}" for lora in value)
        elif isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        parts.append(f"{key}: {value}")
    return "; ".join(parts)
