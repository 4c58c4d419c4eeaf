"""Where the checkpoint is, what it is, and its hash.

``engine.model`` (or a job's ``model``) names one of:

- ``"tiny-random"``: a tiny random-weight SDXL built in memory, a plumbing check (noise, not pictures);
- a single-file SDXL checkpoint ``*.safetensors`` (absolute, or relative to a ``paths.models`` root;
  the ``.safetensors`` suffix may be left out; the checkpoint folders of every root are searched in the
  order ``model_dirs.py`` documents, subfolders included);
- a diffusers-format folder (one that holds ``model_index.json``).

An empty name means "discover": the SDXL ``.safetensors`` checkpoints (and diffusers folders) in the
checkpoint folders of every root are the candidates. Exactly one candidate is used; none or several is a
``ModelNotFound`` error that says what to do. There is never a silent fallback to ``tiny-random``.
Pickle-based files (``.ckpt``, ``.pt``, ``.pth``, ``.bin`` ...) are refused, because loading them can run
arbitrary code, unless ``engine.allow_unsafe_pickle`` is set; then they load through torch's
``weights_only`` loader and every load is logged as a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loguru import logger

from fooocusd.engine.families import PICKLE_SUFFIXES, SAFE_SUFFIX, detect_family
from fooocusd.engine.model_dirs import ModelDirs, is_diffusers_folder, put_file_into
from fooocusd.errors import InvalidInput, ModelNotFound
from fooocusd.json_store import read_json_object, write_json_atomically

TINY_MODEL = "tiny-random"
TINY_REFINER = "tiny-random-refiner"
NO_REFINER = frozenset({"", "none", "off", "no"})
"""Refiner names that mean no refiner."""
SDXL_CONFIG_DIR = Path(__file__).parent / "configs" / "sdxl_base"
"""The shipped diffusers-format SDXL base configs and CLIP tokenizers (no weights)."""
CHECKPOINT_SUBDIR = "checkpoints"
EXAMPLE_CHECKPOINT = "sd_xl_base_1.0.safetensors"
EXAMPLE_FETCH = "juggernautXL_v8Rundiffusion"
CONFIG_KEY = "engine.model"
HASH_CACHE_NAME = "model_hashes.json"
"""The model hash cache's file name, inside the daemon's cache folder."""
PICKLE_SETTING = "engine.allow_unsafe_pickle"
CHECKPOINT_SUFFIXES = (SAFE_SUFFIX, *sorted(PICKLE_SUFFIXES))
ModelRoots = ModelDirs | Path | Sequence[Path]
"""``paths.models`` in any form: one folder, the resolved tuple of roots, or a ``ModelDirs``."""

ModelKind = Literal["tiny", "single_file", "diffusers"]
CheckpointFamily = Literal["sdxl", "sdxl_refiner", "sd1_or_sd2", "lora", "unknown"]


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: what kind it is, where it lives, and the name shown to users."""

    kind: ModelKind
    name: str
    path: Path | None = None

    @property
    def is_tiny(self) -> bool:
        return self.kind == "tiny"


def resolve_model(
    model: str, models: ModelRoots, *, allow_pickle: bool = False, named_by: str = CONFIG_KEY
) -> ModelLocation:
    """Turn ``engine.model`` (or a job's ``model``) into a location. Raises ``ModelNotFound``.

    ``allow_pickle`` is ``engine.allow_unsafe_pickle``: without it pickle-based files are refused.
    ``named_by`` is the key that named the file (a job's ``model``, ``refiner``, ``inpaint_model``),
    so that a missing one is explained as that key's, not as the configuration's ``engine.model``.
    """
    dirs = ModelDirs.of(models)
    name = model.strip()
    if name == TINY_MODEL:
        return ModelLocation(kind="tiny", name=TINY_MODEL)
    if not name:
        return _discover(dirs, allow_pickle)
    found = _root_relative(name, dirs) or dirs.locate("checkpoints", name, CHECKPOINT_SUFFIXES)
    if found is not None:
        return _location_for(found, requested=name, allow_pickle=allow_pickle)
    looked_for = [path for path in dirs.candidates("checkpoints", name) if path.suffix == SAFE_SUFFIX]
    searched = (
        f"(looked for: {', '.join(str(path) for path in looked_for)}, "
        f"in their subfolders, and with the suffixes {', '.join(CHECKPOINT_SUFFIXES[1:])})"
    )
    if named_by == CONFIG_KEY:
        raise ModelNotFound(
            f"model {name!r} was not found",
            where=f"{CONFIG_KEY} = {name!r} {searched}",
            hint=_put_it_here_hint(dirs),
        )
    from fooocusd.engine.fetch import fetch_suggestion  # huggingface_hub, only when it is needed

    instead = (
        f"leave model out of the job (and its preset), or write 'model: default', to use the configured "
        f"one ({CONFIG_KEY})"
        if named_by == "model"
        else f"change {named_by}"
    )
    raise ModelNotFound(
        f"the {named_by} {name!r} was not found",
        where=f"{named_by} = {name!r} {searched}",
        hint=put_file_into(name, [dirs.download_folder("checkpoints")], no_folder="the models folder")
        + fetch_suggestion(name)
        + f", or {instead}",
    )


@contextlib.contextmanager
def job_model_errors(*, configured: bool) -> Iterator[None]:
    """A model that cannot be found or loaded: ``ModelNotFound`` (a configuration error) when it is the
    configured ``engine.model``, ``InvalidInput`` when only a job names it (that job can never succeed as
    it is, so it fails and the daemon goes on)."""
    try:
        yield
    except ModelNotFound as exc:
        if configured:
            raise
        raise InvalidInput(exc.message, hint=exc.hint, where=exc.where) from exc


def checkpoint_family(path: Path) -> CheckpointFamily:
    """Classify a ``.safetensors`` file from its header alone (no tensor is read).

    The coarse families of the first engine; ``families.detect_family`` tells SD 1.5 from SD 2.x,
    VAEs, ControlNets and the prediction type.
    """
    family = detect_family(path).family
    if family in {"sd15", "sd2"}:
        return "sd1_or_sd2"
    if family in {"sdxl", "sdxl_refiner", "lora"}:
        return family  # type: ignore[return-value]
    return "unknown"


def require_sdxl_checkpoint(path: Path) -> None:
    """Refuse anything but an SDXL base checkpoint, with a reason a user can act on."""
    # A pickle reaching this point passed resolve_model's gate (engine.allow_unsafe_pickle).
    info = detect_family(path, allow_pickle=True)
    if info.family == "sdxl":
        return
    what = {
        "sdxl_refiner": "an SDXL refiner checkpoint (it cannot start an image on its own)",
        "sdxl_inpaint": "an SDXL inpainting checkpoint (it only repaints masked areas; set it as "
        "[generation] inpaint_model or a job's inpaint_model instead)",
        "sd15": "a Stable Diffusion 1.x/2.x checkpoint (SD 1.5)",
        "sd2": "a Stable Diffusion 1.x/2.x checkpoint (SD 2.x)",
        "lora": "a LoRA, not a full checkpoint",
        "vae": "a VAE, not a full checkpoint",
        "controlnet": "a ControlNet, not a full checkpoint",
        "embedding": "a textual-inversion embedding, not a full checkpoint",
        "unknown": "not an SDXL checkpoint in the usual single-file layout",
    }[info.family]
    raise ModelNotFound(
        f"{path.name} is {what}; fooocusd needs an SDXL base model",
        where=str(path),
        hint=f"set {CONFIG_KEY} to an SDXL base checkpoint such as {EXAMPLE_CHECKPOINT} "
        "(SDXL fine-tunes like Juggernaut XL work too)",
    )


def file_sha256(path: Path, cache_file: Path) -> str:
    """SHA-256 of a file, cached by (absolute path, size, mtime_ns) so a 7 GB checkpoint is hashed once."""
    absolute = path.resolve()
    stat = absolute.stat()
    cache = read_json_object(cache_file)
    entry = cache.get(str(absolute))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    with absolute.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    cache[str(absolute)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    write_json_atomically(cache_file, cache)
    return digest


def cached_sha256(path: Path, cache_file: Path) -> str:
    """The cached SHA-256 of ``path`` if the cache entry still matches the file; else ``""`` (no hashing)."""
    absolute = path.resolve()
    stat = absolute.stat()
    entry = read_json_object(cache_file).get(str(absolute))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    return ""


def remember_sha256(path: Path, sha256: str, cache_file: Path) -> None:
    """Record a hash verified elsewhere (a checked download), so it is never computed again."""
    absolute = path.resolve()
    stat = absolute.stat()
    cache = read_json_object(cache_file)
    cache[str(absolute)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    write_json_atomically(cache_file, cache)


def folder_sha256(folder: Path, cache_file: Path) -> str:
    """A stable digest of a diffusers folder: SHA-256 over each weight file's relative path and hash."""
    lines = [
        f"{weight.relative_to(folder).as_posix()} {file_sha256(weight, cache_file)}\n"
        for weight in sorted(folder.rglob(f"*{SAFE_SUFFIX}"))
    ]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def model_sha256(location: ModelLocation, cache_file: Path) -> str:
    """The hash recorded in metadata; empty for ``tiny-random`` (it has no file)."""
    if location.path is None:
        return ""
    if location.kind == "diffusers":
        return folder_sha256(location.path, cache_file)
    return file_sha256(location.path, cache_file)


def autov2(sha256: str) -> str:
    """The short hash A1111/Fooocus print: the first 10 hex characters of the SHA-256."""
    return sha256[:10]


def _root_relative(name: str, dirs: ModelDirs) -> Path | None:
    """``name`` as a path from a root itself (``checkpoints/x.safetensors``), or an absolute path."""
    given = Path(name).expanduser()
    bases = [given] if given.is_absolute() else [root / given for root in dirs.roots]
    for base in bases:
        for candidate in _with_suffixes(base):
            if candidate.exists():
                return candidate
    return None


def _with_suffixes(base: Path) -> list[Path]:
    if base.suffix.lower() in {SAFE_SUFFIX, *PICKLE_SUFFIXES}:
        return [base]
    return [base, *(base.with_name(base.name + suffix) for suffix in CHECKPOINT_SUFFIXES)]


def _location_for(path: Path, requested: str, allow_pickle: bool = False) -> ModelLocation:
    if path.is_dir():
        if is_diffusers_folder(path):
            return ModelLocation(kind="diffusers", name=path.name, path=path)
        raise ModelNotFound(
            f"{path} is a folder but not a diffusers model (it has no model_index.json)",
            where=f"{CONFIG_KEY} = {requested!r}",
            hint="point it at a single .safetensors checkpoint or at a diffusers folder",
        )
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelNotFound(
                f"{path.name} is a pickle-based {suffix} file; fooocusd refuses those because loading one "
                "can run arbitrary code",
                where=str(path),
                hint="download the .safetensors version of this model (most model pages offer one) or "
                "convert it once, on a machine you trust, to .safetensors. If you trust this file, "
                f"{PICKLE_SETTING} = true loads it with torch's weights-only loader",
            )
        logger.warning(
            "loading {}: a pickle-based file, allowed by {} = true. Pickles can run code when opened; "
            "it is read with torch.load(weights_only=True). Prefer a .safetensors version.",
            path,
            PICKLE_SETTING,
        )
        return ModelLocation(kind="single_file", name=path.stem, path=path)
    if suffix != SAFE_SUFFIX:
        raise ModelNotFound(
            f"{path.name} is not a model file fooocusd can load (expected {SAFE_SUFFIX})",
            where=f"{CONFIG_KEY} = {requested!r}",
            hint=f"use an SDXL checkpoint ending in {SAFE_SUFFIX}, or a diffusers folder",
        )
    return ModelLocation(kind="single_file", name=path.stem, path=path)


def _discover(dirs: ModelDirs, allow_pickle: bool) -> ModelLocation:
    found: list[Path] = []
    refused: list[Path] = []
    for entry in dirs.files("checkpoints"):
        suffix = entry.suffix.lower()
        if entry.is_file() and suffix in PICKLE_SUFFIXES and not allow_pickle:
            refused.append(entry)
        elif _is_sdxl_model(entry, allow_pickle):
            found.append(entry)
    where = ", ".join(str(root) for root in dirs.roots) or "no models folder"
    if len(found) == 1:
        return _location_for(found[0], requested="", allow_pickle=allow_pickle)
    if not found:
        message = f"no SDXL checkpoint found in {where}"
        if refused:
            message += (
                f" (ignored pickle-based files: {', '.join(p.name for p in refused)}; they are refused "
                f"because loading them can run arbitrary code, unless {PICKLE_SETTING} = true)"
            )
        raise ModelNotFound(message, where=f"{CONFIG_KEY} is empty", hint=_put_it_here_hint(dirs))
    names = [_shown_name(path, dirs) for path in found]
    raise ModelNotFound(
        f"several checkpoints found in {where} and {CONFIG_KEY} does not say which to use: "
        f"{', '.join(names)}",
        where=f"{CONFIG_KEY} is empty",
        hint=f'choose one in the config, e.g. [engine] model = "{names[0]}"',
    )


def _shown_name(path: Path, dirs: ModelDirs) -> str:
    for root in dirs.roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _is_sdxl_model(path: Path, allow_pickle: bool) -> bool:
    if path.is_dir():
        return detect_family(path).family in {"sdxl", "unknown"}  # diffusers folders, as before
    if path.suffix.lower() not in {SAFE_SUFFIX, *(PICKLE_SUFFIXES if allow_pickle else ())}:
        return False
    try:
        return detect_family(path, allow_pickle=allow_pickle).family == "sdxl"
    except ModelNotFound:
        return False


def _put_it_here_hint(dirs: ModelDirs) -> str:
    root = dirs.download_root
    return (
        f"put an SDXL checkpoint in {root} (e.g. {root / EXAMPLE_CHECKPOINT}), run "
        f"`fooocusd models fetch {EXAMPLE_FETCH}`, "
        f'or set [engine] model = "/path/to/{EXAMPLE_CHECKPOINT}" ({CONFIG_KEY}) in the config. '
        f'model = "{TINY_MODEL}" only checks the plumbing: it makes noise, not pictures'
    )
