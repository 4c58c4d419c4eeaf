"""The job that makes a finished image again, read from the settings the image carries.

Three kinds of record, best first:

* fooocusd's sidecar ``<name>.json`` beside the image (or given itself): every setting, the raw
  prompt and the styles by name, and the image job's source image.
* A ``fooocus`` scheme JSON embedded in the image: ours, or Fooocus's own ("Save Metadata to
  Images"). Fooocus's style templates are not fooocusd's, so a Fooocus image is remade from the
  prompts Fooocus actually encoded, with no styles on top.
* A1111 infotext (``parameters``): the prompt as encoded, and the settings A1111 writes. A1111
  has none of Fooocus's refinements, so they are turned off (sharpness 0, adaptive CFG at the
  CFG, neutral ADM guidance) unless the text names them.

Every value is checked by loading the written TOML back as a job file (``remake_toml``), so what
``fooocusd inspect --job`` prints is a file the daemon accepts.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from fooocusd.engine.sampler_table import SAMPLERS, SIGMA_SCHEDULES, canonical_sampler, check_sampler_names
from fooocusd.engine.styles import EXPANSION_STYLE
from fooocusd.errors import InvalidInput
from fooocusd.jobs.resolve import lora_key, normalise_performance
from fooocusd.jobs.spec import JobSpec
from fooocusd.jobs.toml_format import parse_toml
from fooocusd.outbox.metadata import A1111_SAMPLER_NAMES, A1111_SCHEDULE_NAMES
from fooocusd.outbox.reader import parse_a1111_parameters, read_embedded_metadata

SIDECAR_SUFFIX = ".json"
# Where two sampler ids share one A1111 name, Fooocus's own choice (the GPU noise variant) wins.
_PREFERRED_SAMPLERS = ("dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", "uni_pc")
_NEUTRAL_ADM = {"adm_scaler_positive": 1.0, "adm_scaler_negative": 1.0, "adm_scaler_end": 0.0}
# Job keys in the order a person reads them; anything else follows in field order.
_KEY_ORDER = (
    "prompt",
    "extra_prompts",
    "negative",
    "styles",
    "seed",
    "images",
    "performance",
    "steps",
    "aspect",
    "cfg",
    "sharpness",
    "adaptive_cfg",
    "adm_scaler_positive",
    "adm_scaler_negative",
    "adm_scaler_end",
    "clip_skip",
    "sampler",
    "scheduler",
    "model",
    "loras",
    "refiner",
    "refiner_switch",
    "vae",
    "output_format",
)
_LORA_COMBINED = re.compile(r"^lora_combined_\d+$")
_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?")

KnownStyle = Callable[[str], bool]
LocateInput = Callable[[str], Path | None]


@dataclass
class RecordedImage:
    """One image's settings as a job (``job``: JobSpec fields), and what the record says about it."""

    path: Path
    origin: str
    """``fooocusd sidecar``, ``fooocusd``, ``Fooocus`` or ``A1111``."""
    job: dict[str, Any]
    about: dict[str, str] = field(default_factory=dict)
    """Facts for people: when, which job, model hash, the expanded prompt."""
    notes: list[str] = field(default_factory=list)
    """What the job cannot carry, or files it needs beside it."""


def read_recorded_image(
    path: Path, *, known_style: KnownStyle, locate_input: LocateInput = lambda _: None
) -> RecordedImage:
    """The settings ``path`` was made with. ``InvalidInput`` when it carries none.

    ``path`` is an image, or a fooocusd sidecar ``.json``. ``known_style`` tells whether this
    installation has a style of that name; a record naming a style it lacks is remade from the
    prompt as encoded instead. ``locate_input`` finds where a picture the job worked on (by its
    path in the inbox) is now, for the note that asks for it.
    """
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", hint="give the path of an image from the outbox")
    try:
        image = _read(path, known_style, locate_input)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        missing = f"it has no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInput(
            f"the settings recorded in {path.name} are incomplete or garbled: {missing}",
            where=str(path),
            hint="another program may have rewritten them; write the job file by hand",
        ) from exc
    keep_runnable_sampling(image.job, image.notes)
    image.job["images"] = 1  # one record, one image: not the configuration's generation.images
    return image


def keep_runnable_sampling(job: dict[str, Any], notes: list[str]) -> None:
    """Leave out a sampler or scheduler fooocusd does not have (Fooocus has a few more), saying so:
    the job then runs with the default rather than being refused when it is dropped."""
    sampler, scheduler = job.get("sampler"), job.get("scheduler")
    if sampler is not None and canonical_sampler(sampler) not in SAMPLERS:
        notes.append(f"sampler {job.pop('sampler')!r} is not one fooocusd has: the default sampler is used")
    if scheduler is not None and scheduler.strip().lower() not in SIGMA_SCHEDULES:
        notes.append(f"scheduler {job.pop('scheduler')!r} is not one fooocusd has: the default is used")
    if "sampler" in job and "scheduler" in job:
        try:
            check_sampler_names(job["sampler"], job["scheduler"])
        except InvalidInput as exc:
            del job["scheduler"]
            notes.append(f"{exc.message}: the default scheduler is used")


def _read(path: Path, known_style: KnownStyle, locate_input: LocateInput) -> RecordedImage:
    if path.suffix.lower() == SIDECAR_SUFFIX:
        record = _json_file(path)
        if record is None or "schema" not in record:
            raise InvalidInput(
                f"{path.name} is not a fooocusd sidecar", hint="give an image, or the .json written beside it"
            )
        return from_sidecar(path, record, known_style, locate_input)
    sidecar = _matching_sidecar(path)
    embedded = read_embedded_metadata(path)
    scheme, parameters = embedded["fooocus_scheme"], embedded["parameters"]
    if sidecar is not None and (sidecar[1] or (scheme is None and parameters is None)):
        return from_sidecar(path, sidecar[0], known_style, locate_input)
    if scheme is not None and "prompt" in scheme:
        return from_fooocus_scheme(path, scheme, known_style)
    if parameters:
        return from_a1111(path, parameters)
    raise InvalidInput(
        f"{path.name} carries no generation settings: no sidecar {path.with_suffix(SIDECAR_SUFFIX).name} "
        "beside it, and no PNG text or EXIF metadata",
        where=str(path),
        hint="fooocusd writes both unless outbox.embed_metadata is off and the sidecar was moved; "
        "Fooocus writes them only with 'Save Metadata to Images' on; many sites strip them on upload",
    )


def _matching_sidecar(image: Path) -> tuple[dict[str, Any], bool] | None:
    """The sidecar written for ``image``, and whether the image is still byte for byte the one written."""
    record = _json_file(image.with_suffix(SIDECAR_SUFFIX))
    if record is None or record.get("output_file") != image.name:
        return None
    recorded_sha = record.get("image_sha256")
    unchanged = not recorded_sha or hashlib.sha256(image.read_bytes()).hexdigest() == recorded_sha
    return record, unchanged


def _json_file(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# -- fooocusd's sidecar record ----------------------------------------------------------------


def from_sidecar(
    path: Path, record: Mapping[str, Any], known_style: KnownStyle, locate_input: LocateInput = lambda _: None
) -> RecordedImage:
    job: dict[str, Any] = {}
    notes: list[str] = []
    _prompts_and_styles(job, notes, record, list(record.get("styles") or []), known_style)
    job["seed"] = int(record["seed"])
    job["performance"] = record["performance"]
    action = record.get("image_action") or {}
    if not str(action.get("action", "")).startswith("upscale"):
        job["steps"] = int(record["steps"])  # upscales take the mode's own step count
    if not action:
        width = record.get("requested_width") or record["width"]
        height = record.get("requested_height") or record["height"]
        job["aspect"] = f"{width}*{height}"
    for key in ("cfg", "sharpness", "adaptive_cfg", "clip_skip", "sampler", "scheduler", "refiner_switch"):
        if record.get(key) is not None:
            job[key] = record[key]
    job.update(_adm_fields(record.get("adm_guidance")))
    job["model"] = record["model"]
    job["loras"] = [{"name": entry["name"], "weight": entry["weight"]} for entry in record.get("loras") or []]
    refiner = record.get("refiner")
    job["refiner"] = refiner["name"] if refiner else "none"
    job["vae"] = record.get("vae") or "default"
    job["output_format"] = record.get("format", "png")
    if action:
        _image_action_fields(job, action)
    if record.get("image_prompts"):
        _image_prompt_fields(job, record["image_prompts"])
    _pictures_beside(job, notes, locate_input)
    about = {
        "made by": f"fooocusd {record.get('fooocusd_version', '')}".strip(),
        "job": f"{record.get('job_id')} (from {record.get('input_file')})",
        "created": str(record.get("created", "")),
        "preset": str(record.get("preset") or ""),
        "model sha256": str(record.get("model_sha256") or ""),
        "device": f"{record.get('device', '')} {record.get('dtype', '')}".strip(),
        "expanded prompt": str(record.get("expanded_prompt") or ""),
        "notes": "; ".join(str(note) for note in record.get("notes") or []),
    }
    return RecordedImage(path, "fooocusd sidecar", job, _filled(about), notes)


def _prompts_and_styles(
    job: dict[str, Any],
    notes: list[str],
    record: Mapping[str, Any],
    styles: list[str],
    known_style: KnownStyle,
    *,
    from_fooocus: bool = False,
) -> None:
    """The raw prompt and the styles by name, or the prompt as encoded when the styles cannot be
    trusted to give it again: one is not here, or (``from_fooocus``) the templates were Fooocus's."""
    templated = [name for name in styles if name != EXPANSION_STYLE]
    if from_fooocus and templated and _encoded_prompts(job, record):
        notes.append(
            f"made with the Fooocus styles {', '.join(styles)}: their templates are not fooocusd's, so the "
            "job carries the prompt Fooocus encoded (prompt expansion included), with no styles on top"
        )
        return
    missing = [name for name in styles if not known_style(name)]
    if missing and _encoded_prompts(job, record):
        notes.append(
            f"style(s) {', '.join(missing)} are not in this installation, so the job carries the prompt "
            "as it was encoded (styles and prompt expansion already applied) and no styles"
        )
        return
    job["prompt"] = record.get("prompt", "")
    job["extra_prompts"] = list(record.get("extra_prompts") or [])
    job["negative"] = record.get("negative", "")
    job["styles"] = styles
    if missing:
        notes.append(f"style(s) {', '.join(missing)} are not in this installation: add them, or drop them")
    if from_fooocus and templated:
        notes.append(
            f"the Fooocus styles {', '.join(templated)} are matched by name to fooocusd's own, whose "
            "templates differ, so the picture will too"
        )


def _encoded_prompts(job: dict[str, Any], record: Mapping[str, Any]) -> bool:
    """The prompts as encoded (styles and expansion applied), and no styles; False when not recorded."""
    encoded = [text for text in record.get("full_prompt") or [] if text]
    if not encoded:
        return False
    job["prompt"], job["extra_prompts"] = encoded[0], encoded[1:]
    job["negative"] = ", ".join(text for text in record.get("full_negative_prompt") or [] if text)
    job["styles"] = []
    return True


def _adm_fields(adm: Any) -> dict[str, float]:
    values = _numbers(adm)
    if len(values) != len(_NEUTRAL_ADM):
        return {}
    return dict(zip(_NEUTRAL_ADM, values, strict=True))


def _image_action_fields(job: dict[str, Any], action: Mapping[str, Any]) -> None:
    source = str(action.get("source_image") or "")
    job["image"] = source
    job["image_action"] = action["action"]
    if action.get("denoise") and action["action"] not in ("upscale_fast_2x",):
        job["denoise"] = float(action["denoise"])
    for key in ("upscale_factor", "upscale_model"):
        if action.get(key):
            job[key] = action[key]
    if action.get("mask"):
        job["mask"] = action["mask"]
    if "inpaint_model" in action:  # None: the base model repainted it
        model = action["inpaint_model"]
        job["inpaint_model"] = (model.get("name") if isinstance(model, dict) else model) or "none"
    if action.get("outpaint"):
        job["outpaint"] = list(action["outpaint"])
        padding = {int(value) for value in action.get("outpaint_padding") or () if value}
        if len(padding) == 1:
            job["outpaint_distance"] = float(padding.pop())


def _image_prompt_fields(job: dict[str, Any], prompts: Sequence[Mapping[str, Any]]) -> None:
    slots = []
    for prompt in prompts:
        slot: dict[str, Any] = {"image": str(prompt.get("source") or ""), "type": prompt["type"]}
        for key in ("weight", "stop_at"):
            if prompt.get(key) is not None:
                slot[key] = float(prompt[key])
        slots.append(slot)
    job["image_prompts"] = slots


def _pictures_beside(job: dict[str, Any], notes: list[str], locate_input: LocateInput) -> None:
    """Name the job's pictures by file name alone, to sit beside the job file, and say where they are.

    The record has their paths in the inbox (``portrait/shed.png``); the job file may be anywhere.
    Paths stay when two pictures share a file name.
    """
    recorded = [job[key] for key in ("image", "mask") if job.get(key)]
    recorded += [slot["image"] for slot in job.get("image_prompts") or ()]
    if not recorded:
        return
    short = {path: PurePosixPath(path).name for path in recorded}
    if len(set(short.values())) < len(set(short)):
        short = {path: path for path in recorded}
    for key in ("image", "mask"):
        if job.get(key):
            job[key] = short[job[key]]
    for slot in job.get("image_prompts") or ():
        slot["image"] = short[slot["image"]]
    names = list(dict.fromkeys(short[path] for path in recorded))
    pronoun = "it" if len(names) == 1 else "them"
    whereabouts = [
        f"{path} was moved to {found}" for path in dict.fromkeys(recorded) if (found := locate_input(path))
    ]
    notes.append(
        f"the job works on {', '.join(names)}: put {pronoun} beside the job file, and `fooocusd submit` "
        f"takes {pronoun} into the inbox with it" + (f" ({'; '.join(whereabouts)})" if whereabouts else "")
    )


# -- the "fooocus" metadata scheme (Fooocus's own images, and ours without a sidecar) ------------


def from_fooocus_scheme(path: Path, scheme: Mapping[str, Any], known_style: KnownStyle) -> RecordedImage:
    ours = str(scheme.get("version", "")).startswith("fooocusd")
    job: dict[str, Any] = {}
    notes: list[str] = []
    lines = [line.strip() for line in str(scheme.get("prompt", "")).split("\n")]
    record = {
        "prompt": lines[0],  # Fooocus's prompt box: the main prompt, then one extra prompt per line
        "extra_prompts": [line for line in lines[1:] if line],
        "negative": scheme.get("negative_prompt", ""),
        "full_prompt": _string_list(scheme.get("full_prompt")),
        "full_negative_prompt": _string_list(scheme.get("full_negative_prompt")),
    }
    styles = _string_list(scheme.get("styles"))
    _prompts_and_styles(job, notes, record, styles, known_style, from_fooocus=not ours)
    if "seed" in scheme:
        job["seed"] = int(str(scheme["seed"]).strip())
    _set_performance(job, notes, scheme.get("performance"))
    if scheme.get("steps") is not None:
        job["steps"] = int(scheme["steps"])
    size = _numbers(scheme.get("resolution"))
    if len(size) == 2:
        job["aspect"] = f"{int(size[0])}*{int(size[1])}"
    renames = {"guidance_scale": "cfg", "sharpness": "sharpness", "adaptive_cfg": "adaptive_cfg"}
    for key, target in renames.items():
        if scheme.get(key) is not None:
            job[target] = float(scheme[key])
    if scheme.get("clip_skip") is not None:
        job["clip_skip"] = int(scheme["clip_skip"])
    job.update(_adm_fields(scheme.get("adm_guidance")))
    for key in ("sampler", "scheduler"):
        if scheme.get(key):
            job[key] = str(scheme[key])
    if scheme.get("base_model"):
        job["model"] = str(scheme["base_model"])
    job["loras"] = _fooocus_loras(scheme)
    refiner = str(scheme.get("refiner_model") or "None")
    job["refiner"] = "none" if refiner == "None" else refiner
    if scheme.get("refiner_switch") is not None:
        job["refiner_switch"] = float(scheme["refiner_switch"])
    vae = str(scheme.get("vae") or "Default (model)")
    job["vae"] = "default" if vae.lower().startswith("default") else vae
    about = {
        "made by": str(scheme.get("version", "")),
        "model hash": str(scheme.get("base_model_hash", "")),
        "expanded prompt": str(scheme.get("prompt_expansion", "")),
    }
    return RecordedImage(path, "fooocusd" if ours else "Fooocus", job, _filled(about), notes)


def _fooocus_loras(scheme: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``loras`` ([stem, weight, hash] rows), or the older ``lora_combined_N`` = "stem : weight"."""
    rows: list[tuple[str, float]] = []
    for entry in scheme.get("loras") or []:
        if isinstance(entry, list | tuple) and len(entry) >= 2:
            rows.append((str(entry[0]), float(entry[1])))
    if not rows:
        for key in sorted(key for key in scheme if _LORA_COMBINED.match(key)):
            name, _, weight = str(scheme[key]).rpartition(" : ")
            if name:
                rows.append((name.strip(), float(weight)))
    return [{"name": name, "weight": weight} for name, weight in rows if name != "None" and weight != 0]


def _string_list(value: Any) -> list[str]:
    """A list of strings, or the ``"['a', 'b']"`` text Fooocus writes for one (read without eval)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return []
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item) for item in value if str(item).strip()]
    return []


def _set_performance(job: dict[str, Any], notes: list[str], label: Any) -> None:
    """Fooocus's label (``Extreme Speed``) as the job's name for it (``extreme_speed``)."""
    if not label:
        return
    try:
        job["performance"] = normalise_performance(str(label))
    except ValueError:
        notes.append(f"performance {label!r} has no fooocusd equivalent: the default is used")


def _numbers(value: Any) -> list[float]:
    """``"(1.5, 0.8, 0.3)"``, ``[1.5, 0.8, 0.3]`` or ``"896x1152"`` → the numbers in it."""
    if isinstance(value, list | tuple):
        return [float(item) for item in value]
    return [float(match) for match in _NUMBERS.findall(str(value or ""))]


# -- A1111 infotext -----------------------------------------------------------------------------


def from_a1111(path: Path, text: str) -> RecordedImage:
    parsed = parse_a1111_parameters(text)
    params = parsed["params"]
    written_by_fooocus = "Sharpness" in params
    # fooocusd writes what the user wrote as "Raw prompt" (prompt, then extra prompts, a line each)
    # and the styles by name, when they changed the prompt line.
    # A1111 reads a line break in a prompt as a space.
    prompt_lines = (
        params["Raw prompt"].split("\n") if "Raw prompt" in params else [" ".join(parsed["prompt"].split())]
    )
    job: dict[str, Any] = {
        "prompt": prompt_lines[0],
        "extra_prompts": [line for line in prompt_lines[1:] if line.strip()],
        "negative": params.get("Raw negative prompt", parsed["negative"]),
        "styles": _string_list(params.get("Styles", "")),
    }
    if job["styles"] and EXPANSION_STYLE not in job["styles"] and params.get("Fooocus V2 Expansion"):
        job["styles"].insert(0, EXPANSION_STYLE)
    notes: list[str] = []
    if "Seed" in params:
        job["seed"] = int(params["Seed"])
    if "Steps" in params:
        job["steps"] = int(params["Steps"])
    size = _numbers(params.get("Size"))
    if len(size) == 2:
        job["aspect"] = f"{int(size[0])}*{int(size[1])}"
    if "CFG scale" in params:
        job["cfg"] = float(params["CFG scale"])
    _set_performance(job, notes, params.get("Performance"))
    sampler, schedule = a1111_sampler(params.get("Sampler", ""), params.get("Schedule type", ""))
    if sampler:
        job["sampler"] = sampler
    elif params.get("Sampler"):
        notes.append(f"sampler {params['Sampler']!r} has no fooocusd equivalent: the default sampler is used")
    if schedule:
        job["scheduler"] = schedule
    if params.get("Model"):
        job["model"] = params["Model"]
    if written_by_fooocus:
        job["sharpness"] = float(params["Sharpness"])
        job.update(_adm_fields(params.get("ADM Guidance")))
    else:
        # A1111 has no sharpness filter, CFG mimicking or ADM scaling: turn them off.
        job.update(sharpness=0.0, adaptive_cfg=max(job.get("cfg", 1.0), 1.0), **_NEUTRAL_ADM)
    if "Adaptive CFG" in params:
        job["adaptive_cfg"] = float(params["Adaptive CFG"])
    if "Clip skip" in params:
        job["clip_skip"] = int(params["Clip skip"])
    job["loras"] = _a1111_loras(params.get("Lora weights", ""))
    if params.get("Refiner"):
        job["refiner"] = params["Refiner"]
        if params.get("Refiner switch"):
            job["refiner_switch"] = float(params["Refiner switch"])
    if params.get("VAE"):
        job["vae"] = "default" if params["VAE"].lower().startswith("default") else params["VAE"]
    ours = params.get("Version", "").startswith("fooocusd")
    about = {
        "made by": params.get("Version", ""),
        "model hash": params.get("Model hash", ""),
        "expanded prompt": params.get("Fooocus V2 Expansion", ""),
    }
    return RecordedImage(path, "fooocusd" if ours else "A1111", job, _filled(about), notes)


def a1111_sampler(name: str, schedule: str) -> tuple[str, str]:
    """``DPM++ 2M SDE Karras`` → (``dpmpp_2m_sde_gpu``, ``karras``); an unknown name → ("", schedule)."""
    by_label = {label.casefold(): sampler for sampler, label in A1111_SAMPLER_NAMES.items()}
    for sampler in _PREFERRED_SAMPLERS:
        by_label[A1111_SAMPLER_NAMES[sampler].casefold()] = sampler
    schedules = {label.casefold(): key for key, label in A1111_SCHEDULE_NAMES.items()}
    wanted = schedules.get(schedule.strip().casefold(), "")
    label = name.strip().casefold()
    if label.endswith(" karras") and label not in by_label:
        label, wanted = label.removesuffix(" karras"), wanted or "karras"
    if label.endswith(" exponential") and label not in by_label:
        label, wanted = label.removesuffix(" exponential"), wanted or "exponential"
    return by_label.get(label, ""), wanted


def _a1111_loras(text: str) -> list[dict[str, Any]]:
    """``a: 0.5, b: 1.0`` (Fooocus's ``Lora weights``) → LoRA entries."""
    entries = []
    for part in text.split(","):
        name, _, weight = part.rpartition(":")
        if name.strip():
            entries.append({"name": name.strip(), "weight": float(weight)})
    return entries


# -- writing the job file -----------------------------------------------------------------------


def remake_toml(images: Sequence[RecordedImage]) -> str:
    """One ``.toml`` job file that makes each image again: top-level keys for one, ``[[job]]`` for several.

    Each job is preceded by comments naming its image and what it cannot carry. The text is
    parsed back as a job file; an ``InvalidInput`` names the image whose record is unusable.
    """
    parts = []
    for image in images:
        comments = [f"# {image.path.name}: made again from its {image.origin} record"]
        comments += [f"# note: {note}" for note in image.notes]
        table = ordered_job(image.job)
        body = tomli_w.dumps({"job": [table]} if len(images) > 1 else table)
        parts.append("\n".join(comments) + "\n" + body)
        try:
            parse_toml(body, image.path.name)
        except InvalidInput as exc:
            raise InvalidInput(
                f"{image.path.name}: its recorded settings do not make a valid job: {exc.message}",
                where=exc.where,
                hint="write the job by hand from `fooocusd inspect` without --job",
            ) from exc
    return "\n".join(parts)


def ordered_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """``job`` in reading order, without empty extra prompts and LoRA lists."""
    order = [*_KEY_ORDER, *(name for name in JobSpec.model_fields if name not in _KEY_ORDER)]
    ordered = {key: job[key] for key in order if key in job and job[key] is not None}
    for key in ("extra_prompts", "loras"):
        if not ordered.get(key):
            ordered.pop(key, None)
    return ordered


def turn_off_other_loras(job: dict[str, Any], preset_loras: Sequence[str]) -> None:
    """Add weight-0 entries for the preset's LoRAs the image did not use.

    A job's LoRAs are merged with its preset's, and the record lists all that were used, so a
    preset LoRA missing from it was not there when the image was made.
    """
    used = {lora_key(entry["name"]) for entry in job.get("loras") or []}
    extra = [name for name in preset_loras if lora_key(name) not in used]
    if extra:
        job["loras"] = [*(job.get("loras") or []), *({"name": name, "weight": 0.0} for name in extra)]


def _filled(about: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in about.items() if value and value != "None"}
