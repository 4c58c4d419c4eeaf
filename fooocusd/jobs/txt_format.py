"""``.txt`` job files: the prompt as plain text, with optional ``key: value`` option lines.

The rule that keeps bare prompts working: a line is an option only when the text before its
first colon is one of the known option keys below (case-insensitive; ``-``, ``_`` and spaces are
interchangeable). Any other line, with or without a colon, is prompt text. To use a known key
word as the start of a prompt (``model: a woman on a catwalk``), write it after ``prompt:``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from loguru import logger

from fooocusd.errors import InvalidInput, suggest
from fooocusd.jobs.pasted_settings import PastedSettings, pasted_settings
from fooocusd.jobs.spec import MAX_EXTRA_PROMPTS, MAX_NOTES, JobSpec, prompt_is_optional
from fooocusd.jobs.toml_format import build_spec, canonical_key

# Option key as written (after canonical_key) → JobSpec field. ``prompt`` is the escape hatch.
TXT_OPTION_KEYS: dict[str, str] = {
    "prompt": "prompt",
    "negative": "negative",
    "seed": "seed",
    "images": "images",
    "preset": "preset",
    "styles": "styles",
    "aspect": "aspect",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "performance": "performance",
    "cfg": "cfg",
    "sharpness": "sharpness",
    "adaptive_cfg": "adaptive_cfg",
    "adm_scaler_positive": "adm_scaler_positive",
    "adm_scaler_negative": "adm_scaler_negative",
    "adm_scaler_end": "adm_scaler_end",
    "clip_skip": "clip_skip",
    "sampler": "sampler",
    "scheduler": "scheduler",
    "model": "model",
    "output_format": "output_format",
    "priority": "priority",
    "name": "name",
    "image": "image",
    "image_action": "image_action",
    "disable_seed_increment": "disable_seed_increment",
    "wildcards_in_order": "wildcards_in_order",
    "lora": "loras",
    "loras": "loras",
    "refiner": "refiner",
    "refiner_switch": "refiner_switch",
    "vae": "vae",
    "mask": "mask",
    "denoise": "denoise",
    "upscale_factor": "upscale_factor",
    "upscale_model": "upscale_model",
    "inpaint_model": "inpaint_model",
    "outpaint": "outpaint",
    "outpaint_distance": "outpaint_distance",
    "image_prompts": "image_prompts",
    "save_control_images": "save_control_images",
    "notes": "notes",
}
JOB_SEPARATOR = "---"

_OPTION = re.compile(r"^([A-Za-z][A-Za-z _-]*?)\s*:(.*)$")
_ESCAPE_HINT = "if this line is meant as prompt text, write it as 'prompt: <the line>'"
# Words that start prose as often as options ("Size: enormous, towering"): option keys in a .txt
# only when the value is a size or ratio, such as 1024x1024 or 16:9.
PROSE_KEYS = frozenset({"size", "resolution"})
_SIZE_OR_RATIO = re.compile(r"^\d+(\.\d+)?\s*[x×*:]\s*\d+(\.\d+)?$", re.IGNORECASE)


@dataclass
class _Block:
    number: int
    first_line: int
    last_line: int = 0
    prompts: list[tuple[int, str]] = field(default_factory=list)
    options: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # field → (line, key, value)

    @property
    def label(self) -> str:
        return f"job {self.number} (lines {self.first_line}–{self.last_line})"

    def is_empty(self) -> bool:
        return not self.prompts and not self.options


def parse_txt(text: str, source_name: str) -> list[JobSpec]:
    """Parse a ``.txt`` job file. Errors are ``InvalidInput`` with ``where="line N"``."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    pasted = pasted_settings(lines, source_name)
    if pasted is not None:
        return [pasted_to_spec(pasted, lines, source_name)]
    blocks = [block for block in _split_blocks(lines, source_name) if not block.is_empty()]
    if not blocks:
        raise InvalidInput(
            f"{source_name} has no prompt",
            where="the whole file",
            hint="write the prompt on the first line, e.g. 'a red fox in fresh snow, morning light'",
        )
    for number, block in enumerate(blocks, start=1):
        block.number = number  # count only real jobs, so "job 2" matches what the user sees
    return [_to_spec(block, source_name) for block in blocks]


def pasted_to_spec(pasted: PastedSettings, lines: list[str], source_name: str) -> JobSpec:
    """The pasted settings, with the option lines after them on top."""
    pasted_lines = f"the pasted {pasted.kind} (lines 1–{pasted.line_count})"
    blocks = _split_blocks(lines[pasted.line_count :], source_name, first_number=pasted.line_count + 1)
    stray = [line for block in blocks for line in block.prompts] + [
        (block.first_line - 1, JOB_SEPARATOR) for block in blocks[1:]
    ]
    if stray:
        number, line = min(stray)
        raise InvalidInput(
            f"{source_name}: line {number} ({line[:60]!r}) follows {pasted_lines}, where only option "
            "lines may follow",
            where=f"line {number}",
            hint="put the prompt before the settings line, or make the line an option ('images: 4'); "
            "a file with pasted settings is one job",
        )
    options = blocks[0].options
    if _MISTYPED_OPTIONS_SAID.get():
        read = [
            name
            for name, value in pasted.fields.items()
            if value not in ("", [], None) and name not in options
        ]
        logger.info("{}: read as {} ({})", source_name, pasted.kind, ", ".join(read))
        for note in pasted.notes:
            logger.warning("{}: {}", source_name, note)
    fields = {**pasted.fields, **{name: value for name, (_, _, value) in options.items()}}
    yours = [options["notes"][2]] if "notes" in options else []
    fields["notes"] = [*yours, f"read from the {pasted.kind}", *pasted.notes][:MAX_NOTES]

    def locate(field_name: str) -> str:
        return f"line {options[field_name][0]}" if field_name in options else pasted_lines

    written = {name: key for name, (_, key, _) in options.items()}
    return build_spec(fields, locate, whole=pasted_lines, source_name=source_name, written=written)


def _split_blocks(lines: list[str], source_name: str, first_number: int = 1) -> list[_Block]:
    blocks = [_Block(number=1, first_line=first_number)]
    for number, raw in enumerate(lines, start=first_number):
        line = raw.strip()
        block = blocks[-1]
        block.last_line = number
        if line == JOB_SEPARATOR:
            block.last_line = number - 1
            blocks.append(_Block(number=block.number + 1, first_line=number + 1, last_line=number))
            continue
        if not line or line.startswith("#"):
            continue
        option = _option(line)
        if option is None:
            _warn_if_mistyped_option(line, number, source_name)
            block.prompts.append((number, line))
            continue
        key, field_name, value = option
        if field_name == "prompt":
            if value:
                block.prompts.append((number, value))
            continue
        _add_option(block, number, key, field_name, value, source_name)
    return blocks


def _option(line: str) -> tuple[str, str, str] | None:
    """(key as written, JobSpec field, value) when the line is an option line."""
    match = _OPTION.match(line)
    if not match:
        return None
    key, value = match.group(1).strip(), match.group(2).strip()
    if key.lower() in PROSE_KEYS and not _SIZE_OR_RATIO.match(value):
        return None
    field_name = TXT_OPTION_KEYS.get(canonical_key(key))
    if field_name is None:
        return None
    return key, field_name, value


def _add_option(block: _Block, number: int, key: str, field_name: str, value: str, source_name: str) -> None:
    if not value:
        raise InvalidInput(
            f"{source_name}: option '{key}' has no value",
            where=f"line {number}",
            hint=f"write a value after the colon (e.g. 'seed: 42') or delete the line; {_ESCAPE_HINT}",
        )
    if field_name == "loras" and field_name in block.options:
        # 'lora: name:weight' may be repeated; the values are read as one comma-separated list.
        first, first_key, earlier_value = block.options[field_name]
        block.options[field_name] = (first, first_key, f"{earlier_value}, {value}")
        return
    if field_name == "image_prompts" and field_name in block.options:
        # 'image prompt: ref.png pyracanny 0.6' may be repeated, one slot per line.
        first, first_key, earlier_value = block.options[field_name]
        block.options[field_name] = (first, first_key, f"{earlier_value}\n{value}")
        return
    if field_name in block.options:
        earlier, earlier_key, _ = block.options[field_name]
        twice = earlier_key.lower() == key.lower()
        what = f"option '{key}' is set twice" if twice else f"'{earlier_key}' and '{key}' set the same option"
        raise InvalidInput(
            f"{source_name}: {what} in {block.label}, on lines {earlier} and {number}",
            where=f"line {number}",
            hint=f"keep one of the two lines; to start another job, put a line '{JOB_SEPARATOR}' before it",
        )
    block.options[field_name] = (number, key, value)


def _to_spec(block: _Block, source_name: str) -> JobSpec:
    if not block.prompts and "image" not in block.options and not prompt_is_optional():
        keys = ", ".join(f"'{key}'" for _, key, _ in block.options.values())
        raise InvalidInput(
            f"{source_name}: {block.label} has options ({keys}) but no prompt",
            where=block.label,
            hint="add a line with the prompt; if one of those lines was meant as prompt text, "
            "write it as 'prompt: <the line>'",
        )
    fields: dict[str, object] = {name: value for name, (_, _, value) in block.options.items()}
    written = {name: key for name, (_, key, _) in block.options.items()}
    if len(block.prompts) > MAX_EXTRA_PROMPTS + 1:
        first_over = block.prompts[MAX_EXTRA_PROMPTS + 1][0]
        raise InvalidInput(
            f"{source_name}: {block.label} has {len(block.prompts)} prompt lines; a job takes the main "
            f"prompt and at most {MAX_EXTRA_PROMPTS} more",
            where=f"line {first_over}",
            hint="each line after the first is an extra prompt, encoded on its own: join lines "
            "into one (ideas separated by commas), or make several jobs with a line '---' between them",
        )
    if block.prompts:
        fields["prompt"] = block.prompts[0][1]
        fields["extra_prompts"] = [text for _, text in block.prompts[1:]]

    def locate(field_name: str) -> str:
        if field_name in block.options:
            return f"line {block.options[field_name][0]}"
        if field_name == "extra_prompts" and len(block.prompts) > 1:
            return f"line {block.prompts[-1][0]}"
        if field_name == "prompt" and block.prompts:
            return f"line {block.prompts[0][0]}"
        return block.label

    try:
        return build_spec(fields, locate, whole=block.label, source_name=source_name, written=written)
    except InvalidInput as exc:
        if _looks_like_prose(exc.where, block):
            exc.hint = f"{exc.hint}; {_ESCAPE_HINT}" if exc.hint else _ESCAPE_HINT
        raise


def _looks_like_prose(where: str, block: _Block) -> bool:
    # "Seed: the beginning of life" is probably a prompt; "cfg: 100" is a value out of range.
    return any(f"line {line}" == where and " " in value for line, _, value in block.options.values())


_MISTYPED_OPTIONS_SAID: ContextVar[bool] = ContextVar("mistyped_options_said", default=True)


@contextmanager
def mistyped_options_unsaid() -> Iterator[None]:
    """Parse without the mistyped-option warnings: for a look at a file that is parsed again,
    and warned about, when it is loaded."""
    token = _MISTYPED_OPTIONS_SAID.set(False)
    try:
        yield
    finally:
        _MISTYPED_OPTIONS_SAID.reset(token)


def _warn_if_mistyped_option(line: str, number: int, source_name: str) -> None:
    # A mistyped key is prompt text by the rule above; say so in the log, since the job still runs.
    if not _MISTYPED_OPTIONS_SAID.get():
        return
    match = _OPTION.match(line)
    if not match or " " in match.group(1).strip() or match.group(1).strip().lower() in PROSE_KEYS:
        return
    near = suggest(canonical_key(match.group(1)), list(TXT_OPTION_KEYS), cutoff=0.8)
    if near:
        logger.warning(
            "{}: line {} ({!r}) is read as prompt text, not an option{}", source_name, number, line[:60], near
        )


_PICTURE_FIELDS = frozenset({"image", "mask", "image_prompts"})


def prompt_job_text(prompt: str, options: list[str]) -> str:
    """A ``.txt`` job: ``prompt`` on one line, then a ``key: value`` line for each ``KEY=VALUE`` of
    ``options`` (``fooocusd submit --prompt TEXT --set KEY=VALUE``). The prompt is written after
    ``prompt:`` when it would otherwise read as an option, a comment or a job separator. Pasted
    generation settings (``pasted_settings``) keep their lines.

    Raises ``InvalidInput`` for an empty prompt, and for an option that is not ``KEY=VALUE`` with
    a known key: written as it is, an unknown key would be read as more prompt text.
    """
    line = " ".join(prompt.split())
    if not line:
        raise InvalidInput("the prompt is empty", hint='say what to draw: --prompt "a red fox in the snow"')
    pasted = prompt.strip().splitlines()
    if pasted_settings(pasted, "--prompt") is not None:
        lines = pasted  # a recipe pasted from civitai, A1111 or Fooocus: its lines are its structure
    elif line.startswith("#") or line == JOB_SEPARATOR or _option(line) is not None:
        lines = [f"prompt: {line}"]
    else:
        lines = [line]
    for option in options:
        key, equals, value = option.partition("=")
        field_name = TXT_OPTION_KEYS.get(canonical_key(key))
        if not equals or not value.strip() or field_name in (None, "prompt"):
            known = [name for name in TXT_OPTION_KEYS if name != "prompt"]
            raise InvalidInput(
                f"--set {option!r} is not KEY=VALUE with a job option as KEY"
                + suggest(canonical_key(key), known),
                where="--set",
                hint='e.g. --set seed=42 --set images=4 --set aspect=16:9; the README\'s "Job files" section '
                "lists every option",
            )
        if field_name in _PICTURE_FIELDS:
            raise InvalidInput(
                f"--set {key.strip()} names a picture, which a job made from --prompt has no folder for",
                where="--set",
                hint="write a .txt job file beside the picture (e.g. 'image: cat.png') and submit that file",
            )
        lines.append(f"{key.strip()}: {' '.join(value.split())}")
    return "\n".join(lines) + "\n"
