"""``fooocusd submit --dry-run``: what each job of a file would run with, and nothing written.

A job file sets a few keys; its preset (named, or routed by the inbox subfolder), the performance
mode and ``[generation]`` fill in the rest. The preview resolves them as the daemon will, so a
user sees the model, size, steps, sampler and LoRAs before queueing a hundred images. Wildcards,
choices, arrays and the prompt expansion are drawn per image when it runs, so prompts are shown as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.prompt_syntax import loras_from_tags, parse_inline_loras
from fooocusd.jobs.action_files import image_action
from fooocusd.jobs.name_checks import with_preset
from fooocusd.jobs.performance import uov_steps
from fooocusd.jobs.presets import preset_for_subfolder, preset_search_dirs
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.settings import Settings


def job_previews(
    specs: Sequence[JobSpec], relpath: str, settings: Settings, paired: tuple[str, bool] | None = None
) -> list[dict[str, Any]]:
    """Each job's resolved settings, for a file that would land at ``relpath`` in the inbox.

    ``paired``: the picture beside the file that pairs with it by name, and whether a mask pairs
    with that picture; it becomes the input image of each job that names none, as at intake.
    """
    preset_dirs = preset_search_dirs(settings.paths.resolved().presets)
    routed = preset_for_subfolder(relpath, preset_dirs)
    previews = []
    for number, spec in enumerate(specs, start=1):
        if paired is not None and spec.image is None and not _image_prompt_only(spec, paired[0]):
            default = "inpaint" if paired[1] else settings.generation.image_action
            spec = spec.model_copy(update={"image": paired[0], "image_action": spec.image_action or default})
        spec, preset, preset_name = with_preset(spec, routed, f"job {number}", settings, preset_dirs)
        seeded = spec if spec.seed is not None else spec.model_copy(update={"seed": 0})
        request = resolve_requests(seeded, preset, settings.generation, settings.engine.model)[0]
        action = image_action(spec, settings.generation)
        steps = request.steps
        if action is not None and action.startswith("upscale") and spec.steps is None:
            steps = uov_steps(request.performance)
        previews.append(
            {
                "job": number,
                "preset": preset_name,
                "prompt": request.prompt,
                "extra_prompts": list(request.extra_prompts),
                "negative": request.negative,
                "styles": list(request.styles),
                "images": spec.images,
                "seed": spec.seed if spec.seed is not None else "random",
                "size": f"{request.width}×{request.height}" if action is None else "from the image",
                "steps": steps,
                "performance": request.performance,
                "cfg": request.cfg,
                "sharpness": request.sharpness,
                "sampler": request.sampler,
                "scheduler": request.scheduler,
                "model": request.model or "engine.model (not set)",
                "loras": [{"name": name, "weight": weight} for name, weight in _all_loras(request) if weight],
                "refiner": request.refiner or "none",
                "vae": request.vae or "the model's own",
                "image": spec.image,
                "image_action": action,
                "notes": list(spec.notes),
            }
        )
    return previews


def _all_loras(request: GenerationRequest) -> list[tuple[str, float]]:
    """The preset's, the mode's and the job's LoRAs, then those its prompt's ``<lora:…>`` tags add."""
    return [*request.loras, *loras_from_tags(request.loras, parse_inline_loras(request.prompt)[1])]


def _image_prompt_only(spec: JobSpec, picture: str) -> bool:
    """The job names the paired picture as an image prompt, so it is not its input image."""
    return any(PurePosixPath(prompt.image).name == picture for prompt in spec.image_prompts or [])


def preview_lines(previews: Sequence[dict[str, Any]]) -> list[str]:
    """The previews for people: a block of lines per job."""
    lines: list[str] = []
    for preview in previews:
        seed = preview["seed"]
        seeds = "a random seed" if seed == "random" else f"seed {seed}"
        picture = f"{preview['image_action']} of {preview['image']}" if preview["image"] else "text to image"
        lines.append(f"job {preview['job']} (preset '{preview['preset']}', {picture}):")
        lines.append(f"  prompt: {preview['prompt'] or '(none)'}")
        lines += [f"  prompt line: {extra}" for extra in preview["extra_prompts"]]
        if preview["negative"]:
            lines.append(f"  negative: {preview['negative']}")
        lines.append(f"  styles: {', '.join(preview['styles']) or '(none)'}")
        lines.append(
            f"  {preview['images']} image(s) from {seeds}, {preview['size']}, {preview['steps']} steps "
            f"({preview['performance']}), cfg {preview['cfg']:g}, sharpness {preview['sharpness']:g}, "
            f"{preview['sampler']} / {preview['scheduler']}"
        )
        loras = ", ".join(f"{lora['name']} {lora['weight']:g}" for lora in preview["loras"]) or "none"
        files = f"refiner: {preview['refiner']}; VAE: {preview['vae']}; LoRAs: {loras}"
        lines.append(f"  model: {preview['model']}; {files}")
        lines += [f"  note: {note}" for note in preview["notes"]]
    if lines:
        lines.append(
            "wildcards, {choices}, [[arrays]] and the prompt expansion are drawn for each image when it runs"
        )
    return lines
