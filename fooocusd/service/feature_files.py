"""Which image features have their model files: upscaling, the inpainting model, each image-prompt type.

``fooocusd doctor`` reports it, so that a new install shows what works before a job fails for it.
Each feature is checked as a job that uses it would be when queued (``preset_check``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fooocusd.jobs.action_files import action_files
from fooocusd.jobs.preset_check import MissingFile, missing_files
from fooocusd.jobs.spec import ImagePromptSpec, ImagePromptType, JobSpec
from fooocusd.settings import Settings

_PROBE_IMAGE = "probe.png"
_IMAGE_PROMPT_FEATURES: dict[str, ImagePromptType] = {
    "image prompts": "image_prompt",
    "face image prompts": "face",
    "canny image prompts": "pyracanny",
    "cpds image prompts": "cpds",
    "depth image prompts": "depth",
}


@dataclass(frozen=True)
class FeatureFiles:
    feature: str
    missing: list[MissingFile]


def feature_files(settings: Settings) -> list[FeatureFiles]:
    """Each image feature, with the model files it lacks (none: it is ready)."""
    generation = settings.generation
    probes = {"upscale": JobSpec(image=_PROBE_IMAGE, image_action="upscale_2x")}
    if generation.inpaint_model.strip():
        probes["inpainting model"] = JobSpec(image=_PROBE_IMAGE, image_action="inpaint")
    for feature, kind in _IMAGE_PROMPT_FEATURES.items():
        if kind != "cpds" or settings.controlnet.cpds.strip():  # else not a feature here (the report says)
            probes[feature] = JobSpec(
                prompt="probe", image_prompts=[ImagePromptSpec(image=_PROBE_IMAGE, type=kind)]
            )
    models = settings.paths.resolved().models
    return [
        FeatureFiles(feature, missing_files(action_files(spec, generation, settings.controlnet), models))
        for feature, spec in probes.items()
    ]


def feature_report(settings: Settings) -> tuple[bool, str]:
    """(every feature is ready, what to say): the features ready, then what each other one lacks,
    by the name ``fooocusd models fetch`` takes where the catalogue has it."""
    from fooocusd.engine.fetch import catalogue_name, load_catalogue  # huggingface_hub

    features = feature_files(settings)
    ready = [item.feature for item in features if not item.missing]
    notes = (
        []
        if settings.controlnet.cpds.strip()
        else ["cpds image prompts: controlnet.cpds names no ControlNet"]
    )
    lacking = [item for item in features if item.missing]
    if not lacking:
        return True, "; ".join([f"ready: {', '.join(ready)}", *notes])
    catalogue = load_catalogue()
    fetch_names = {
        (missing.kind, missing.name): catalogue_name(missing.name, catalogue)
        for item in lacking
        for missing in item.missing
    }

    def named(missing: MissingFile) -> str:
        return (
            fetch_names[(missing.kind, missing.name)]
            or f"{missing.file_name} (not in the catalogue: put it into {missing.folder})"
        )

    needs = [
        f"{item.feature} lacks {', '.join(named(missing) for missing in item.missing)}" for item in lacking
    ]
    detail = "; ".join([f"ready: {', '.join(ready) or 'none'}", *needs, *notes])
    fetchable = [name is not None for name in fetch_names.values()]
    if any(fetchable):
        detail += f". `fooocusd models fetch NAME` downloads {'each' if all(fetchable) else 'the others'}"
    return False, detail
