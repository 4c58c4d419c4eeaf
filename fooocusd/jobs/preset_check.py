"""Before rendering: does every model file a preset names exist?

A preset that names a checkpoint, refiner, VAE or LoRA the user has not downloaded would otherwise
fail deep inside the engine, one file at a time. This check lists every missing file at once, with
the folder it belongs in and the ``fooocusd models fetch`` command that downloads it.

Files the job replaces with its own (its ``model``, ``refiner``, ``vae`` or ``performance``) are
not checked, since the job will not use them. With ``engine.model = "tiny-random"`` the preset's
checkpoint, refiner and VAE are not used (see ``resolve.py``), so only its LoRAs are checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fooocusd.engine.model_dirs import SAFE_SUFFIX, ModelDirs, ModelFileKind
from fooocusd.engine.models import CHECKPOINT_SUFFIXES, TINY_MODEL, resolve_model
from fooocusd.errors import InvalidInput, ModelNotFound
from fooocusd.jobs.performance import fetch_name, performance_mode
from fooocusd.jobs.presets import Preset
from fooocusd.jobs.resolve import lora_key
from fooocusd.jobs.spec import JobSpec

_NO_FILE = {"", "none", "default", "default (model)"}
_KIND_LABEL: dict[str, str] = {"checkpoints": "checkpoint", "loras": "LoRA", "vae": "VAE"}


@dataclass(frozen=True)
class MissingFile:
    kind: ModelFileKind
    name: str
    purpose: str
    folder: Path

    def describe(self) -> str:
        file_name = self.name if self.name.endswith(SAFE_SUFFIX) else self.name + SAFE_SUFFIX
        return f"{_KIND_LABEL[self.kind]} {file_name} ({self.purpose}), which belongs in {self.folder}"


def check_preset_models(
    preset: Preset, spec: JobSpec, models: ModelDirs | Path | Sequence[Path], engine_model: str
) -> None:
    """Raise ``InvalidInput`` naming the preset and every model file of it the job needs but lacks.

    ``models`` is ``paths.models`` (one root or several).
    """
    job_weights = {lora_key(lora.name): lora.weight for lora in spec.loras or ()}
    wanted = _preset_files(preset, spec.model_fields_set, job_weights, engine_model)
    missing = _missing(wanted, ModelDirs.of(models))
    if missing:
        raise _missing_error(preset, missing)


def missing_default_files(
    preset: Preset, performance: str, models: ModelDirs | Path | Sequence[Path], engine_model: str
) -> list[MissingFile]:
    """The model files a job that sets nothing itself needs but lacks: those of the default preset,
    and the LoRA of ``generation.performance`` when that preset sets no performance of its own."""
    wanted = _preset_files(preset, set(), {}, engine_model)
    if preset.performance is None:
        mode = performance_mode(performance)
        if mode.lora is not None:
            wanted.append(("loras", mode.lora[0], f"for generation.performance = {performance!r}"))
    return _missing(wanted, ModelDirs.of(models))


def _preset_files(
    preset: Preset, job_sets: set[str], job_weights: dict[str, float], engine_model: str
) -> list[tuple[ModelFileKind, str, str]]:
    """(kind, name, purpose) of each file the preset makes a job use, given the keys the job sets."""
    wanted: list[tuple[ModelFileKind, str, str]] = []
    if engine_model != TINY_MODEL:
        for field, kind, purpose in (
            ("model", "checkpoints", "its model"),
            ("refiner", "checkpoints", "its refiner"),
            ("vae", "vae", "its VAE"),
        ):
            value = getattr(preset, field)
            if value is not None and value.strip().lower() not in _NO_FILE and field not in job_sets:
                wanted.append((kind, value, purpose))
    for lora in preset.loras or ():
        if lora.weight != 0.0 and job_weights.get(lora_key(lora.name), lora.weight) != 0.0:
            wanted.append(("loras", lora.name, f"at weight {lora.weight:g}"))
    if preset.performance is not None and "performance" not in job_sets:
        mode = performance_mode(preset.performance)
        if mode.lora is not None:
            wanted.append(("loras", mode.lora[0], f"for its {mode.label} performance mode"))
    return wanted


def _missing(wanted: list[tuple[ModelFileKind, str, str]], dirs: ModelDirs) -> list[MissingFile]:
    return [
        MissingFile(kind, name, purpose, dirs.download_folder(kind))
        for kind, name, purpose in wanted
        if not _exists(kind, name, dirs)
    ]


def _exists(kind: ModelFileKind, name: str, dirs: ModelDirs) -> bool:
    if kind == "checkpoints":
        try:
            resolve_model(name, dirs)  # the engine's own lookup, so the two never disagree
        except ModelNotFound:
            # Present but refused (a pickle, say): not "missing"; the engine explains the refusal.
            return dirs.locate("checkpoints", name, CHECKPOINT_SUFFIXES) is not None
        return True
    return dirs.locate(kind, name) is not None


def describe_missing(missing: list[MissingFile]) -> tuple[str, str]:
    """The missing files described one after another, and the command that downloads them all."""
    files = "; ".join(item.describe() for item in missing)
    fetch = " && ".join(f"fooocusd models fetch {fetch_name(item.name)}" for item in missing)
    return files, fetch


def _missing_error(preset: Preset, missing: list[MissingFile]) -> InvalidInput:
    files, fetch = describe_missing(missing)
    plural = "files" if len(missing) > 1 else "file"
    return InvalidInput(
        f"preset '{preset.name}' needs model {plural} that are not installed: {files}",
        where=f"preset '{preset.name}'" + (f" ({preset.path})" if preset.path else ""),
        hint=f"download {'them' if len(missing) > 1 else 'it'} with `{fetch}` (or copy the "
        f"{plural} into the folder named above), then `fooocusd retry` this job or drop it again; "
        "or pick another preset",
    )
