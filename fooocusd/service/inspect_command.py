"""``fooocusd inspect IMAGE…``: the settings an image was made with, or a job file that makes it again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fooocusd.engine.styles import PSEUDO_STYLES, load_styles
from fooocusd.errors import FooocusdError
from fooocusd.jobs.presets import load_preset, preset_search_dirs
from fooocusd.outbox.remake import (
    KnownStyle,
    RecordedImage,
    ordered_job,
    read_recorded_image,
    remake_toml,
    turn_off_other_loras,
)
from fooocusd.service.styles_command import user_style_dirs
from fooocusd.settings import LoadedSettings

AGAIN_HINT = "make it again: fooocusd inspect IMAGE --job > again.toml, then fooocusd submit again.toml"


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``inspect`` (called from ``cli.py``)."""
    inspect = sub.add_parser(
        "inspect", parents=parents, help="the settings an image was made with, or a job file to make it again"
    )
    inspect.add_argument(
        "images",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="an image (fooocusd, Fooocus or A1111) or a sidecar",
    )
    form = inspect.add_mutually_exclusive_group()
    form.add_argument(
        "--job",
        action="store_true",
        help="print a .toml job file that makes the image(s) again, on the same seed",
    )
    form.add_argument(
        "--json", action="store_true", help="machine-readable output (a list, one entry per image)"
    )
    inspect.set_defaults(handler=inspect_images)


def inspect_images(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """Exit 0 when every image's settings were read, 1 when one carried none.

    With ``--job`` such an image is an error (exit 2) and nothing is printed: a job file missing
    one of the images asked for would pass unnoticed in a pipe.
    """
    known_style = _style_lookup(args, loaded)
    preset_loras = _default_preset_loras(loaded)
    done = loaded.settings.paths.resolved().done
    read: list[RecordedImage] = []
    errors: list[FooocusdError] = []
    for path in args.images:
        try:
            image = read_recorded_image(
                Path(path).expanduser(), known_style=known_style, locate_input=lambda rel: _in(done, rel)
            )
        except FooocusdError as exc:
            if args.job:
                raise
            errors.append(exc)
            continue
        turn_off_other_loras(image.job, preset_loras)
        read.append(image)
    if args.job:
        sys.stdout.write(remake_toml(read))
        return 0
    if args.json:
        print(json.dumps([_as_json(image) for image in read], indent=2, ensure_ascii=False))
    else:
        _print_readable(read)
    for error in errors:
        print(error.explain(), file=sys.stderr)
    return 1 if errors else 0


def _in(folder: Path, relpath: str) -> Path | None:
    """Where an input's picture went after its job (``done/`` keeps inbox paths), if still there."""
    candidate = folder / relpath
    return candidate if candidate.is_file() else None


def _style_lookup(args: argparse.Namespace, loaded: LoadedSettings) -> KnownStyle:
    library = load_styles(user_style_dirs(args, loaded))
    pseudo = {name.casefold() for name in PSEUDO_STYLES}
    return lambda name: name.casefold() in pseudo or name in library


def _default_preset_loras(loaded: LoadedSettings) -> list[str]:
    """The LoRAs of the preset a job dropped into the inbox's top folder gets (it merges them in)."""
    settings = loaded.settings
    try:
        preset = load_preset(settings.generation.preset, preset_search_dirs(settings.paths.presets))
    except FooocusdError:
        return []  # the daemon refuses to start without it; nothing to turn off here
    return [lora.name for lora in preset.loras or ()]


def _as_json(image: RecordedImage) -> dict[str, Any]:
    return {
        "file": str(image.path),
        "origin": image.origin,
        "job": ordered_job(image.job),
        "about": image.about,
        "notes": image.notes,
    }


def _print_readable(images: list[RecordedImage]) -> None:
    console = Console()
    for image in images:
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in ordered_job(image.job).items():
            table.add_row(key, escape(_readable(value)))
        for key, value in image.about.items():
            table.add_row(key, escape(value), style="dim")
        console.print(f"[bold]{escape(image.path.name)}[/bold] (from its {escape(image.origin)} record)")
        console.print(table)
        for note in image.notes:  # not wrapped, so that the paths in them can be copied whole
            console.print(f"note: {escape(note)}", style="yellow", soft_wrap=True)
        console.print()
    if images:
        console.print(escape(AGAIN_HINT), style="dim")


def _readable(value: Any) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            return "; ".join(", ".join(f"{key} {item}" for key, item in entry.items()) for entry in value)
        return ", ".join(str(item) for item in value) or "(none)"
    if value == "":
        return "(empty)"
    return str(value)
