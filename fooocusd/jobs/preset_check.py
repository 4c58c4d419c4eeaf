"""Does every model file a job will use exist?

A job, or its preset, that names a checkpoint, refiner, VAE or LoRA the user has not downloaded, or
whose image action or image prompts need an upscaler, IP-Adapter or ControlNet that is not there,
would otherwise fail deep inside the engine, one file at a time. These checks list every missing
file at once, with the folder it belongs in and the ``fooocusd models fetch`` command that
downloads it, where the catalogue has one.

* ``missing_job_files`` runs when a file is queued and in ``fooocusd submit``: a warning at once,
  rather than only a failure when the job's turn comes. The job is still queued, since the file
  may arrive before then (and ``fooocusd retry --all-failed`` reruns jobs that failed for it).
* ``check_preset_models`` fails the job before rendering when its preset's files are missing.

Files the job replaces with its own (its ``model``, ``refiner``, ``vae`` or ``performance``) are
not checked, since the job will not use them. With ``engine.model = "tiny-random"`` the preset's
checkpoint, refiner and VAE are not used (see ``resolve.py``), so only its LoRAs are checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.families import PICKLE_SUFFIXES
from fooocusd.engine.model_dirs import (
    EMBEDDING_SUFFIXES,
    KIND_LABELS,
    MODEL_FILE_SUFFIXES,
    SAFE_SUFFIX,
    ModelDirs,
    ModelFileKind,
)
from fooocusd.engine.models import CHECKPOINT_SUFFIXES, NO_REFINER, TINY_MODEL, TINY_REFINER, resolve_model
from fooocusd.engine.prompt_syntax import (
    WILDCARD_PATTERN,
    WildcardLibrary,
    embedding_names,
    parse_inline_loras,
)
from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import InvalidInput, ModelNotFound
from fooocusd.jobs.action_files import WantedFile, action_files
from fooocusd.jobs.performance import fetch_name, performance_mode
from fooocusd.jobs.presets import Preset
from fooocusd.jobs.resolve import lora_key, resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.settings import Settings

_NO_FILE = {"", "none", "default", "default (model)"}
_NAMED_WITH_SUFFIX = (*MODEL_FILE_SUFFIXES, ".onnx")


@dataclass(frozen=True)
class MissingFile:
    kind: ModelFileKind
    name: str
    purpose: str
    folder: Path

    @property
    def file_name(self) -> str:
        """The name as it is on disk: ``detail.safetensors``, ``yunet.onnx``, a folder's ``name/``."""
        if self.kind == "depth_estimator":
            return f"{self.name}/"
        if self.name.lower().endswith(_NAMED_WITH_SUFFIX):
            return self.name
        return self.name + SAFE_SUFFIX

    def describe(self) -> str:
        label = KIND_LABELS[self.kind] + (" folder" if self.kind == "depth_estimator" else "")
        return f"{label} {self.file_name} ({self.purpose}), which belongs in {self.folder}"


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


def missing_job_files(
    spec: JobSpec,
    preset: Preset,
    settings: Settings,
    styles: StyleLibrary,
    models: ModelDirs | Path | Sequence[Path],
) -> list[MissingFile]:
    """Every model file the job will use that is not installed now.

    The files are those of the job's resolved settings: its model, refiner, VAE and LoRAs (the
    preset's, the performance mode's, its own and its prompt's ``<lora:…>`` tags), wherever each
    came from; the embeddings its prompts name, or its styles, or any line of the wildcards they
    use (``prompt_texts``); then
    those of its image action and image prompts (``action_files``). The configured
    ``engine.model`` is checked when the daemon starts, not here. A name found in two subfolders
    counts as present: the engine explains it.
    """
    if spec.seed is None:  # not chosen yet: any seed resolves the same files
        spec = spec.model_copy(update={"seed": 0})
    engine_model = settings.engine.model
    request = resolve_requests(spec, preset, settings.generation, engine_model)[0]
    job_sets = spec.model_fields_set

    def purpose(field: str, label: str) -> str:
        return f"the job's {label}" if field in job_sets else f"the {label} of preset '{preset.name}'"

    wanted: list[WantedFile] = []
    if request.model.strip() not in {"", TINY_MODEL, engine_model}:
        wanted.append(("checkpoints", request.model, purpose("model", "model")))
    refiner = request.refiner.strip()
    if refiner.lower() not in NO_REFINER and refiner != TINY_REFINER and request.refiner_switch < 1.0:
        wanted.append(("checkpoints", refiner, purpose("refiner", "refiner")))
    if request.vae.strip():
        wanted.append(("vae", request.vae, purpose("vae", "VAE")))
    mode = performance_mode(request.performance)
    for name, weight in request.loras:
        if weight == 0.0:
            continue
        if mode.lora is not None and lora_key(name) == lora_key(mode.lora[0]):
            wanted.append(("loras", name, f"for the {mode.label} performance mode"))
        else:
            wanted.append(("loras", name, f"at weight {weight:g}"))
    wildcards = WildcardLibrary(settings.paths.resolved().wildcards, warn=False)
    texts = prompt_texts(request, styles, wildcards)
    listed = {lora_key(name) for name, _ in request.loras}
    # The texts whose tags load a LoRA: the prompt, and any wildcard line it may draw.
    tag_texts = [("the prompt", request.prompt), *((w, t) for w, t in texts if w.startswith("a line of"))]
    for where, text in tag_texts:
        for tag in parse_inline_loras(text)[1]:
            if tag.weight != 0.0 and lora_key(tag.name) not in listed:
                listed.add(lora_key(tag.name))
                wanted.append(("loras", tag.name, f"named in {where} as {tag.tag}"))
    wanted.extend(_embeddings(texts))
    wanted.extend(action_files(spec, settings.generation, settings.controlnet))
    dirs = ModelDirs.of(models)
    missing: list[MissingFile] = []
    for kind, name, why in wanted:
        try:
            missing.extend(_missing([(kind, name, why)], dirs))
        except ModelNotFound:  # in two subfolders: present, and the engine says which to name
            continue
    return missing


def prompt_texts(
    request: GenerationRequest, styles: StyleLibrary, wildcards: WildcardLibrary
) -> list[tuple[str, str]]:
    """Every text that may end up in the job's prompts, each with where it comes from: its own
    lines, the templates of its styles, and every line of each wildcard they name (any line may be
    picked), level by level. "Random Style" is left out: it may pick any style."""
    texts: list[tuple[str, str]] = [
        ("the prompt", request.prompt),
        *(("the prompt", extra) for extra in request.extra_prompts),
        ("the negative", request.negative),
    ]
    for name in request.styles:
        if name in styles:
            style = styles.get(name)
            texts += [(f"style '{style.name}'", style.prompt), (f"style '{style.name}'", style.negative)]
    seen: set[str] = set()
    for _where, text in texts:  # grows as wildcard lines are added: nested wildcards too
        for name in WILDCARD_PATTERN.findall(text):
            if name not in seen:
                seen.add(name)
                texts += [(f"a line of __{name}__", line) for line in wildcards.lines(name)]
    return texts


def _embeddings(texts: Sequence[tuple[str, str]]) -> list[WantedFile]:
    wanted: dict[str, WantedFile] = {}
    for where, text in texts:
        for name in embedding_names(text):
            if ".." not in Path(name).parts:  # refused as a name when the job runs, with the reason
                wanted.setdefault(name.lower(), ("embeddings", name, f"written embedding:{name} in {where}"))
    return list(wanted.values())


def job_files_warning(missing: list[MissingFile], place: str) -> str:
    """A warning for a queued job that lacks ``missing`` (not empty), to follow the file's name:
    what, and how to get it. ``place`` is "job 2" in a file of several jobs, else empty."""
    files, _ = describe_missing(missing)
    several = len(missing) > 1
    needs, are = ("model files that are", "are") if several else ("a model file that is", "is")
    job = f", {place}," if place else ""
    return (
        f"{job} needs {needs} not installed: {files}. It fails when its turn comes unless "
        f"{'they' if several else 'it'} {are} there by then: {how_to_get(missing)}, or correct the job "
        "(`fooocusd models list` shows the names a job uses)"
    )


def failed_job_files_note(missing: list[MissingFile], error: str) -> str:
    """For the report of a job that failed with ``error``: every model file it lacks, so that they
    can all be put in place before it runs again, not one per failure. Empty when ``error`` says
    it all (it names the only one) or nothing is missing."""
    if not missing or (len(missing) == 1 and _names_file(error, missing[0].name)):
        return ""
    files, _ = describe_missing(missing)
    return (
        f"\nModel files this job needs that are not installed: {files}.\nTo get them: {how_to_get(missing)}."
    )


def _names_file(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text) is not None


def how_to_get(missing: list[MissingFile]) -> str:
    """``run `fooocusd models fetch …``` for those the catalogue has, and copying for the rest."""
    from fooocusd.engine.fetch import catalogue_name, load_catalogue  # huggingface_hub: only when needed

    catalogue = load_catalogue()
    names = {item: catalogue_name(item.name, catalogue) for item in missing}
    fetchable = [item for item in missing if names[item]]
    others = [item for item in missing if item not in fetchable]
    fetch = "fooocusd models fetch " + " ".join(dict.fromkeys(str(names[item]) for item in fetchable))
    if not fetchable:
        return f"copy {'them into the folders' if len(missing) > 1 else 'it into the folder'} named above"
    if not others:
        return f"run `{fetch}`"
    return f"run `{fetch}` and copy the other{'s' if len(others) > 1 else ''} into place (named above)"


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
) -> list[WantedFile]:
    """(kind, name, purpose) of each file the preset makes a job use, given the keys the job sets."""
    wanted: list[WantedFile] = []
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


def missing_files(wanted: list[WantedFile], models: ModelDirs | Path | Sequence[Path]) -> list[MissingFile]:
    """Those of ``wanted`` that are not installed, each with the folder it belongs in."""
    return _missing(wanted, ModelDirs.of(models))


def _missing(wanted: list[WantedFile], dirs: ModelDirs) -> list[MissingFile]:
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
    if kind == "loras":  # present but refused (a pickle): the engine explains the refusal
        return dirs.locate(kind, name, (SAFE_SUFFIX, *sorted(PICKLE_SUFFIXES))) is not None
    if kind == "clip_vision":  # any of the encoder's names will do
        from fooocusd.engine.ip_adapter.files import encoder_location

        try:
            encoder_location(dirs)
        except InvalidInput:
            return False
        return True
    if kind == "embeddings":
        found = dirs.locate(kind, name, EMBEDDING_SUFFIXES)
        return found is not None and found.is_file()
    if kind == "depth_estimator":  # a folder
        found = dirs.locate(kind, name, ())
        return found is not None and found.is_dir()
    return dirs.locate(kind, name) is not None


def describe_missing(missing: list[MissingFile]) -> tuple[str, str]:
    """The missing files described one after another, and the command that downloads them all."""
    files = "; ".join(item.describe() for item in missing)
    fetch = "fooocusd models fetch " + " ".join(dict.fromkeys(fetch_name(item.name) for item in missing))
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
