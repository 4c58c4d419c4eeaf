"""Where the checkpoint is, what it is, and its hash.

``engine.model`` (or a job's ``model``) names one of:

- ``"tiny-random"``: a tiny random-weight SDXL built in memory, a plumbing check (noise, not pictures);
- a single-file SDXL checkpoint ``*.safetensors`` (absolute, or relative to ``paths.models``; the
  ``.safetensors`` suffix may be left out, and ``paths.models/checkpoints/`` is searched too);
- a diffusers-format folder (one that holds ``model_index.json``).

An empty name means "discover": the SDXL ``.safetensors`` checkpoints (and diffusers folders) directly
in ``paths.models/checkpoints/`` and ``paths.models/`` are the candidates. Exactly one candidate is used;
none or several is a ``ModelNotFound`` error that says what to do. There is never a silent fallback to
``tiny-random``. Pickle-based files (``.ckpt``, ``.pt``, ``.bin`` ...) are refused: loading them can run
arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fooocusd.errors import ModelNotFound

TINY_MODEL = "tiny-random"
SDXL_CONFIG_DIR = Path(__file__).parent / "configs" / "sdxl_base"
"""The shipped diffusers-format SDXL base configs and CLIP tokenizers (no weights)."""
SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
CHECKPOINT_SUBDIR = "checkpoints"
EXAMPLE_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONFIG_KEY = "engine.model"

ModelKind = Literal["tiny", "single_file", "diffusers"]
CheckpointFamily = Literal["sdxl", "sdxl_refiner", "sd1_or_sd2", "lora", "unknown"]

# Keys that only an SDXL *base* checkpoint (sgm layout) has: the ADM label embedding of its UNet and the
# OpenCLIP bigG text tower in the second conditioner slot.
_SDXL_UNET_KEY = "model.diffusion_model.label_emb.0.0.weight"
_SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
_SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
_SD1_SD2_PREFIX = "cond_stage_model."


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: what kind it is, where it lives, and the name shown to users."""

    kind: ModelKind
    name: str
    path: Path | None = None

    @property
    def is_tiny(self) -> bool:
        return self.kind == "tiny"


def resolve_model(model: str, models_dir: Path) -> ModelLocation:
    """Turn ``engine.model`` (or a job's ``model``) into a location. Raises ``ModelNotFound``."""
    name = model.strip()
    if name == TINY_MODEL:
        return ModelLocation(kind="tiny", name=TINY_MODEL)
    if not name:
        return _discover(models_dir)
    for candidate in _candidate_paths(name, models_dir):
        if candidate.exists():
            return _location_for(candidate, requested=name)
    looked_in = ", ".join(str(path) for path in _candidate_paths(name, models_dir))
    raise ModelNotFound(
        f"model {name!r} was not found",
        where=f"{CONFIG_KEY} = {name!r} (looked for: {looked_in})",
        hint=_put_it_here_hint(models_dir),
    )


def checkpoint_family(path: Path) -> CheckpointFamily:
    """Classify a ``.safetensors`` file from its header alone (no tensor is read)."""
    keys = _safetensors_keys(path)
    if _SDXL_UNET_KEY in keys and any(key.startswith(_SDXL_TEXT2_PREFIX) for key in keys):
        return "sdxl"
    if any(key.startswith(_SDXL_REFINER_PREFIX) for key in keys):
        return "sdxl_refiner"
    if any(key.startswith(_SD1_SD2_PREFIX) for key in keys):
        return "sd1_or_sd2"
    if any("lora_down" in key or "lora_A" in key or key.startswith("lora_") for key in keys):
        return "lora"
    return "unknown"


def require_sdxl_checkpoint(path: Path) -> None:
    """Refuse anything but an SDXL base checkpoint, with a reason a user can act on."""
    family = checkpoint_family(path)
    if family == "sdxl":
        return
    what = {
        "sdxl_refiner": "an SDXL refiner checkpoint (it cannot start an image on its own)",
        "sd1_or_sd2": "a Stable Diffusion 1.x/2.x checkpoint",
        "lora": "a LoRA, not a full checkpoint",
        "unknown": "not an SDXL checkpoint in the usual single-file layout",
    }[family]
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
    cache = _read_hash_cache(cache_file)
    entry = cache.get(str(absolute))
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    with absolute.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    cache[str(absolute)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_hash_cache(cache_file, cache)
    return digest


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


def _candidate_paths(name: str, models_dir: Path) -> list[Path]:
    given = Path(name).expanduser()
    bases = [given] if given.is_absolute() else [models_dir / given, models_dir / CHECKPOINT_SUBDIR / given]
    candidates: list[Path] = []
    for base in bases:
        candidates.append(base)
        if base.suffix.lower() not in {SAFE_SUFFIX, *PICKLE_SUFFIXES}:
            candidates.append(base.with_name(base.name + SAFE_SUFFIX))
            candidates.extend(base.with_name(base.name + suffix) for suffix in sorted(PICKLE_SUFFIXES))
    return candidates


def _location_for(path: Path, requested: str) -> ModelLocation:
    if path.is_dir():
        if _is_diffusers_folder(path):
            return ModelLocation(kind="diffusers", name=path.name, path=path)
        raise ModelNotFound(
            f"{path} is a folder but not a diffusers model (it has no model_index.json)",
            where=f"{CONFIG_KEY} = {requested!r}",
            hint="point it at a single .safetensors checkpoint or at a diffusers folder",
        )
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelNotFound(
            f"{path.name} is a pickle-based {suffix} file; fooocusd refuses those because loading one can "
            "run arbitrary code",
            where=str(path),
            hint="download the .safetensors version of this model (most model pages offer one) or convert "
            "it once, on a machine you trust, to .safetensors",
        )
    if suffix != SAFE_SUFFIX:
        raise ModelNotFound(
            f"{path.name} is not a model file fooocusd can load (expected {SAFE_SUFFIX})",
            where=f"{CONFIG_KEY} = {requested!r}",
            hint=f"use an SDXL checkpoint ending in {SAFE_SUFFIX}, or a diffusers folder",
        )
    return ModelLocation(kind="single_file", name=path.stem, path=path)


def _discover(models_dir: Path) -> ModelLocation:
    found: list[Path] = []
    refused: list[Path] = []
    for folder in (models_dir / CHECKPOINT_SUBDIR, models_dir):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if _is_diffusers_folder(entry) or _is_sdxl_single_file(entry):
                found.append(entry)
            elif entry.is_file() and entry.suffix.lower() in PICKLE_SUFFIXES:
                refused.append(entry)
    if len(found) == 1:
        return _location_for(found[0], requested="")
    if not found:
        message = f"no SDXL checkpoint found in {models_dir}"
        if refused:
            message += (
                f" (ignored pickle-based files: {', '.join(p.name for p in refused)}; they are refused "
                "because loading them can run arbitrary code)"
            )
        raise ModelNotFound(message, where=f"{CONFIG_KEY} is empty", hint=_put_it_here_hint(models_dir))
    names = ", ".join(str(p.relative_to(models_dir)) for p in found)
    raise ModelNotFound(
        f"several checkpoints found in {models_dir} and {CONFIG_KEY} does not say which to use: {names}",
        where=f"{CONFIG_KEY} is empty",
        hint=f'choose one in the config, e.g. [engine] model = "{found[0].relative_to(models_dir)}"',
    )


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def _is_sdxl_single_file(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == SAFE_SUFFIX):
        return False
    try:
        return checkpoint_family(path) == "sdxl"
    except ModelNotFound:
        return False


def _put_it_here_hint(models_dir: Path) -> str:
    return (
        f"put an SDXL checkpoint in {models_dir} (e.g. {models_dir / EXAMPLE_CHECKPOINT}), "
        f'or set [engine] model = "/path/to/{EXAMPLE_CHECKPOINT}" ({CONFIG_KEY}) in the config. '
        f'model = "{TINY_MODEL}" only checks the plumbing: it makes noise, not pictures'
    )


def _safetensors_keys(path: Path) -> set[str]:
    # The format is: 8-byte little-endian header length, then a JSON header naming every tensor.
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError(f"implausible header size {size}")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelNotFound(
            f"{path.name} is not a readable .safetensors file ({exc})",
            where=str(path),
            hint="the download may be incomplete or corrupt; download it again",
        ) from exc
    if not isinstance(header, dict):
        raise ModelNotFound(f"{path.name} has a malformed .safetensors header", where=str(path))
    return {key for key in header if key != "__metadata__"}


def _read_hash_cache(cache_file: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(cache_file: Path, cache: dict[str, dict[str, object]]) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".hashes-", dir=cache_file.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(cache, out, indent=1, sort_keys=True)
        os.replace(temporary, cache_file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
