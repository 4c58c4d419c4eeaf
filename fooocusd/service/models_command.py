"""``fooocusd models list|fetch``: what model files the daemon can see, and downloading known ones."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fooocusd.engine.families import PICKLE_SUFFIXES, detect_family
from fooocusd.engine.fetch import (
    CatalogueEntry,
    CatalogueError,
    catalogue_name,
    fetch,
    load_catalogue,
    lookup,
)
from fooocusd.engine.model_dirs import KINDS, ModelDirs, root_layout
from fooocusd.engine.models import HASH_CACHE_NAME, autov2, cached_sha256, file_sha256, remember_sha256
from fooocusd.errors import FooocusdError
from fooocusd.jobs.preset_check import missing_default_files
from fooocusd.jobs.presets import load_preset, preset_search_dirs
from fooocusd.service.folders import Folders
from fooocusd.settings import LoadedSettings

_MIN_WIDTH = 140


@dataclass(frozen=True)
class ModelFileRow:
    kind: str
    name: str
    """What a job (or the config) writes to use the file."""
    family: str
    label: str
    prediction: str
    resolution: int | None
    size: int
    sha256: str
    path: str
    note: str = ""
    """Why the file cannot be used as it is (a pickle, unreadable), or empty."""


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``models list`` and ``models fetch`` (called from ``cli.py``)."""
    models = sub.add_parser("models", parents=parents, help="list model files, fetch known ones")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=parents, help="every model file in the model folders")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--hash", action="store_true", help="compute missing SHA-256 hashes (slow)")
    listing.set_defaults(handler=list_models)
    fetching = actions.add_parser("fetch", parents=parents, help="download files from the catalogue")
    fetching.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="catalogue names, e.g. juggernautXL_v8Rundiffusion sdxl_lcm_lora",
    )
    fetching.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="PRESET",
        help="also every file preset PRESET uses that is not installed, e.g. --preset realistic (repeatable)",
    )
    fetching.add_argument("--force", action="store_true", help="download again even if the file exists")
    fetching.set_defaults(handler=fetch_model)


def list_models(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    dirs, hash_cache = _dirs_and_cache(loaded)
    rows = model_rows(
        dirs,
        hash_cache,
        compute_hashes=bool(getattr(args, "hash", False)),
        allow_pickle=loaded.settings.engine.allow_unsafe_pickle,
    )
    roots = [{"path": str(root), "layout": root_layout(root)} for root in dirs.roots]
    if getattr(args, "json", False):
        print(json.dumps({"roots": roots, "files": [asdict(row) for row in rows]}, indent=2))
        return 0
    console = Console(width=max(Console().width, _MIN_WIDTH))
    for root in roots:
        console.print(f"models folder: {escape(root['path'])} ({root['layout']})")
    if not rows:
        console.print(
            "no model files found; put them in the folders above, or `fooocusd models fetch NAME` "
            f"(names: {', '.join(load_catalogue())})"
        )
        return 0
    console.print(_table(rows))
    return 0


def fetch_model(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """Download each named entry in turn, printing the path of each once it is in place. Every name
    is looked up first, so a typo stops the command before anything is downloaded."""
    catalogue = load_catalogue()
    dirs, hash_cache = _dirs_and_cache(loaded)
    console = Console(stderr=True, soft_wrap=True)
    presets = list(getattr(args, "preset", None) or [])
    if not args.names and not presets:
        raise CatalogueError(
            "name what to fetch",
            hint="give catalogue names (`fooocusd models fetch sdxl_lcm_lora`) or a preset "
            "(`fooocusd models fetch --preset realistic`); `fooocusd models fetch nope` lists the names",
        )
    names = [
        *args.names,
        *_preset_entry_names(presets, loaded, dirs, catalogue, say=lambda text: console.print(escape(text))),
    ]
    entries = list({entry.name: entry for entry in (lookup(name, catalogue) for name in names)}.values())
    for entry in entries:
        result = fetch(
            entry,
            dirs,
            force=bool(getattr(args, "force", False)),
            progress=sys.stderr.isatty(),
            say=lambda message: console.print(escape(message)),
        )
        if result.sha256:
            remember_sha256(result.path, result.sha256, hash_cache)
        print(result.path, flush=True)
    return 0


def _preset_entry_names(
    presets: list[str],
    loaded: LoadedSettings,
    dirs: ModelDirs,
    catalogue: dict[str, CatalogueEntry],
    say: Callable[[str], object],
) -> list[str]:
    """The catalogue names of the files each preset uses (its checkpoint, refiner, VAE, LoRAs and
    performance LoRA) that are not installed. Raises ``CatalogueError`` for one the catalogue lacks."""
    settings = loaded.settings
    search = preset_search_dirs(settings.paths.resolved().presets)
    names: list[str] = []
    for preset_name in presets:
        preset = load_preset(preset_name, search)
        # engine_model "": the preset's own checkpoint counts even while engine.model is the tiny test model
        missing = missing_default_files(preset, settings.generation.performance, dirs, engine_model="")
        if not missing:
            say(f"preset '{preset.name}' has every file it uses")
        for item in missing:
            entry_name = catalogue_name(item.name, catalogue)
            if entry_name is None:
                raise CatalogueError(
                    f"preset '{preset.name}' uses {item.file_name}, which is not in the model catalogue",
                    hint=f"download it yourself into {item.folder}",
                )
            names.append(entry_name)
    return names


def model_rows(
    dirs: ModelDirs, hash_cache: Path, *, compute_hashes: bool = False, allow_pickle: bool = False
) -> list[ModelFileRow]:
    """One row per model file or model folder, kind by kind, in search order."""
    rows: list[ModelFileRow] = []
    seen: set[Path] = set()
    for kind in KINDS:
        for path in dirs.files(kind):
            if path in seen:
                continue
            seen.add(path)
            rows.append(_row(kind, dirs.name_for(kind, path), path, hash_cache, compute_hashes, allow_pickle))
    return rows


def _row(
    kind: str, name: str, path: Path, hash_cache: Path, compute_hashes: bool, allow_pickle: bool
) -> ModelFileRow:
    try:
        info = detect_family(path, allow_pickle=allow_pickle)
        family, label = info.family, info.label
        refused = path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle
        note = "a pickle: not loaded unless engine.allow_unsafe_pickle = true" if refused else ""
        prediction, resolution = info.prediction or "", info.resolution
    except FooocusdError as exc:
        family, label, prediction, resolution, note = "unreadable", "unreadable", "", None, exc.message
    if path.is_dir():
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        sha256 = ""
    else:
        size = path.stat().st_size
        sha256 = file_sha256(path, hash_cache) if compute_hashes else cached_sha256(path, hash_cache)
    return ModelFileRow(kind, name, family, label, prediction, resolution, size, sha256, str(path), note)


def _table(rows: list[ModelFileRow]) -> Table:
    table = Table(show_lines=False)
    for column in ("kind", "name", "family", "size", "sha256", "path"):
        table.add_column(column, no_wrap=column not in ("name", "family", "path"), overflow="fold")
    for row in rows:
        table.add_row(
            row.kind,
            escape(row.name),
            row.label + (f" [dim]({escape(row.note)})[/dim]" if row.note else ""),
            _human_size(row.size),
            autov2(row.sha256) if row.sha256 else "(--hash)",
            escape(row.path),
        )
    return table


def _dirs_and_cache(loaded: LoadedSettings) -> tuple[ModelDirs, Path]:
    folders = Folders.from_paths(loaded.settings.paths.resolved())
    return ModelDirs.of(folders.models), folders.cache / HASH_CACHE_NAME


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
