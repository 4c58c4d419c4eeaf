"""One drop (a job file, an image, a mask, or a pairing of them) → validated job specs.

Every problem is an ``InvalidInput`` whose message, ``where`` and ``hint`` end up in the
``<name>.error.txt`` written next to the input in ``failed/`` (see ``error_report``).
Image and mask paths in the returned specs are relative to the inbox, in POSIX form.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path, PurePath

from loguru import logger

from fooocusd.access import cannot_read
from fooocusd.errors import InvalidInput
from fooocusd.jobs.drop_files import DropFiles, resolve_written_path
from fooocusd.jobs.images import binary_content
from fooocusd.jobs.json_format import parse_json
from fooocusd.jobs.recorded_prompt import recorded_prompt
from fooocusd.jobs.resolve import normalise_image_action
from fooocusd.jobs.spec import MAX_NOTES, JobSpec, image_attached_after_parsing
from fooocusd.jobs.toml_format import parse_toml
from fooocusd.jobs.txt_format import parse_txt

JOB_FILE_PARSERS = {".txt": parse_txt, ".toml": parse_toml, ".json": parse_json}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

ACCEPTED_INPUTS_REMINDER = """\
What the inbox accepts:
  name.txt         the prompt on the first line; optional 'key: value' lines (seed: 42,
                   aspect: 16:9, images: 4, ...); a line with only --- starts another job;
                   or generation settings pasted from civitai, A1111 or Fooocus
  name.toml        the same keys as TOML (prompt = "..."), or several [[job]] tables
  name.json        the same keys as JSON ({"prompt": "..."}), a list of such objects, or
                   a fooocusd sidecar or Fooocus parameters to make an image again
  name.png/.jpg/.webp (or .heic, .avif, .tif, .bmp, .gif)
                   an image alone is varied; next to name.txt, .toml or .json it is that
                   job's input image (the prompt is then optional); name.mask.png beside
                   it marks the area to repaint
Lines starting with # in a .txt file are comments. Files must be saved as UTF-8 (or UTF-16
with a byte-order mark, as Windows PowerShell writes)."""
README_POINTER = 'The README\'s "Job files" section describes every key, with examples.'


def load_drop(
    spec_path: Path | None,
    image_path: Path | None,
    mask_path: Path | None,
    inbox: Path,
    *,
    max_job_file_bytes: int,
    max_image_pixels: int,
    default_image_action: str,
    files: DropFiles | None = None,
    use_recorded_prompt: bool = False,
) -> list[JobSpec]:
    """Read, parse and check one drop. Paths must still be at their place inside ``inbox``.

    Pass ``files`` to learn afterwards which inbox files the jobs name (``files.named_files``):
    intake claims them together with the drop.

    - a job file alone: its jobs; a job needs a prompt unless it names an image. Images and masks
      it names are resolved relative to it and must lie in the inbox (intake claims them with it);
    - a job file with an image: the image becomes the input of every job that names none, and
      those jobs need no prompt;
    - an image alone: one job that applies ``default_image_action`` to it;
    - with ``use_recorded_prompt``, an image job without a prompt takes the one its image records;
    - a mask needs its image, goes with the jobs that use that image, and makes ``inpaint``
      their default action. A mask must have its image's shape; the worker scales it to size.
    """
    if mask_path is not None and image_path is None:
        raise InvalidInput(
            f"the mask {mask_path.name} has no image to go with",
            where=mask_path.name,
            hint=f"drop the image beside it with the same name, e.g. {_image_name_for_mask(mask_path)}",
        )
    files = files if files is not None else DropFiles(inbox, max_image_pixels)
    paired = files.dropped(image_path, "image") if image_path is not None else None
    paired_mask: str | None = None
    if mask_path is not None and paired is not None:
        paired_mask = files.dropped(mask_path, "mask")
        files.require_mask_fits(paired_mask, paired, where=mask_path.name)
    action = normalise_image_action(default_image_action)

    if spec_path is None:
        if paired is None:
            raise ValueError("load_drop needs a job file, an image, or both")
        alone = JobSpec(prompt="", image=paired, image_action="inpaint" if paired_mask else action)
        if paired_mask:
            alone = alone.model_copy(update={"mask": paired_mask})
        return [_with_recorded_prompt(alone, files) if use_recorded_prompt else alone]

    # With an image beside the file, every job gets an image below, so none needs a prompt.
    # Without one, the parsers refuse a job that has neither, with their own precise message.
    with image_attached_after_parsing() if paired is not None else nullcontext():
        specs = parse_job_file(spec_path, max_job_file_bytes=max_job_file_bytes)
    specs = [_with_inputs(spec, spec_path, files, paired, paired_mask, action) for spec in specs]
    return [_with_recorded_prompt(spec, files) if use_recorded_prompt else spec for spec in specs]


def _with_recorded_prompt(spec: JobSpec, files: DropFiles) -> JobSpec:
    """An image job written without a prompt takes the one its image records (``recorded_prompt``);
    its negative and styles too, unless the job sets them."""
    if spec.image is None or spec.prompt.strip() or spec.extra_prompts:
        return spec
    recorded = recorded_prompt(files.inbox_root / spec.image)
    update = {
        name: value
        for name, value in recorded.items()
        if name in ("prompt", "extra_prompts") or name not in spec.model_fields_set
    }
    if not update:
        return spec
    logger.info("{}: redrawn with the prompt recorded in it: {!r}", spec.image, update["prompt"][:80])
    names = [name.replace("_", " ") for name in update]
    taken = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    notes = [*spec.notes, f"{taken} taken from what {PurePath(spec.image).name} records"][:MAX_NOTES]
    return spec.model_copy(update={**update, "notes": notes})


def parse_job_file(path: Path, *, max_job_file_bytes: int) -> list[JobSpec]:
    """Check the size, decode (``decode_job_text``) and parse by extension (.txt, .toml or .json)."""
    parser = JOB_FILE_PARSERS.get(path.suffix.lower())
    if parser is None:
        raise InvalidInput(
            f"{path.name}: job files must end in .txt, .toml or .json",
            where=path.name,
            hint="rename the file to .txt (a plain prompt), or .toml or .json (a full job spec)",
        )
    try:
        size = path.stat().st_size
        if size > max_job_file_bytes:
            raise _too_big(path, size, max_job_file_bytes)
        with path.open("rb") as handle:
            data = handle.read(max_job_file_bytes + 1)
    except OSError as exc:
        raise cannot_read(path, exc) from exc
    if len(data) > max_job_file_bytes:  # it grew after the size check
        raise _too_big(path, len(data), max_job_file_bytes)
    text = decode_job_text(data, path.name)
    try:
        return parser(text, path.name)
    except RecursionError as exc:  # tomllib recurses once per level of [[[…]]] or {a = {…}}
        raise InvalidInput(
            f"{path.name}: values are nested too deeply to read",
            where=path.name,
            hint="a job needs plain values: strings, numbers, and lists of them; remove the nesting",
        ) from exc


def _decode_utf16(data: bytes, source_name: str) -> str:
    try:
        text = data.decode("utf-16")  # the BOM says which byte order, and is dropped
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode("utf-16", errors="replace").count("\n") + 1
        raise _undecodable(
            f"{source_name} starts like UTF-16 text but is not valid UTF-16 (line {line})", line
        ) from exc
    return _refuse_nul(text, source_name)


def decode_job_text(data: bytes, source_name: str) -> str:
    """UTF-8 (a BOM is fine), or UTF-16 with its BOM → text; anything else → ``InvalidInput``
    naming the first bad line.

    UTF-16 with a byte-order mark is what Windows PowerShell 5's ``>`` and ``Out-File`` write and
    what older Notepads call "Unicode": the mark makes it unambiguous, so it is read, not refused.
    """
    if data.startswith(_UTF16_BOMS):
        return _decode_utf16(data, source_name)
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _refuse_binary(data, source_name)
        line = data[: exc.start].count(b"\n") + 1
        reason = f"{source_name} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        raise _undecodable(reason, line) from exc
    if "\x00" in text:  # text never holds NUL; a picture may decode as UTF-8 that far
        _refuse_binary(data, source_name)
    return _refuse_nul(text, source_name)


def _refuse_binary(data: bytes, source_name: str) -> None:
    """A picture or document saved under a job file's name (it is not text): say what it is, not
    which byte is bad."""
    found = binary_content(data[:16])
    if found is None:
        return
    what, extension = found
    if extension is not None:
        hint = f"rename it to {PurePath(source_name).stem}{extension}: an image alone is varied"
    else:
        hint = "write the prompt in a plain text file (.txt)"
    raise InvalidInput(f"{source_name} is {what}, not text", where="the whole file", hint=hint)


def _undecodable(reason: str, line: int) -> InvalidInput:
    return InvalidInput(
        reason,
        where=f"line {line}",
        hint="save the file as UTF-8; most editors offer it under Save As → Encoding",
    )


def _refuse_nul(text: str, source_name: str) -> str:
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise InvalidInput(
            f"{source_name} contains a NUL byte on line {line}; it does not look like a text file",
            where=f"line {line}",
            hint="save the job as plain UTF-8 text",
        )
    return text


def error_report(exc: InvalidInput, input_name: str) -> str:
    """The text of ``<input_name>.error.txt``: what is wrong, where, how to fix, and a reminder."""
    lines = [
        f"fooocusd could not use {input_name}, so it was moved to the failed folder.",
        "",
        f"What is wrong: {exc.message}",
    ]
    if exc.where:
        lines.append(f"Where: {exc.where}")
    if exc.hint:
        lines.append(f"How to fix: {exc.hint}")
    lines += [
        "",
        f"Fix the file here, then run `fooocusd retry {input_name}` to put it back in the inbox",
        "(or drop it into the inbox again yourself).",
        "",
        ACCEPTED_INPUTS_REMINDER,
        "",
        README_POINTER,
        "",
    ]
    return "\n".join(lines)


def _too_big(path: Path, size: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"{path.name}: file is {size:,} bytes, limit is {limit:,} (intake.max_job_file_bytes)",
        where=path.name,
        hint="split it into several job files, or raise intake.max_job_file_bytes in the config",
    )


def _with_inputs(
    spec: JobSpec,
    spec_path: Path,
    files: DropFiles,
    paired: str | None,
    paired_mask: str | None,
    default_action: str,
) -> JobSpec:
    """``spec`` with its image, mask and image prompts resolved (named ones checked), its action decided."""
    spec = _with_image_prompt_files(spec, spec_path, files, paired)
    if spec.image is not None:
        image = files.named(spec.image, spec_path, "image")
    elif paired is not None and _uses_paired_only_as_image_prompt(spec, paired):
        image = None
    else:
        image = paired
    if image is None:
        _refuse_image_keys_without_image(spec, spec_path)
        return spec
    if spec.mask is not None:
        mask = files.named(spec.mask, spec_path, "mask")
        files.require_mask_fits(mask, image, where="mask")
    else:
        mask = paired_mask if image == paired else None  # name.mask.png belongs to name.png only
    update: dict[str, str] = {
        "image": image,
        "image_action": spec.image_action or ("inpaint" if mask is not None else default_action),
    }
    if mask is not None:
        update["mask"] = mask
    return spec.model_copy(update=update)


def _with_image_prompt_files(spec: JobSpec, spec_path: Path, files: DropFiles, paired: str | None) -> JobSpec:
    """Each image prompt's file resolved relative to the job file, inside the inbox, checked."""
    if not spec.image_prompts:
        return spec
    slots = []
    for slot in spec.image_prompts:
        written = resolve_written_path(slot.image, spec_path)
        if paired is not None and _same_file(written, files.inbox_root / paired):
            relative = paired  # the image dropped beside the job file: already part of the drop
        else:
            relative = files.named(slot.image, spec_path, "image prompt")
        slots.append(slot.model_copy(update={"image": relative}))
    return spec.model_copy(update={"image_prompts": slots})


def _uses_paired_only_as_image_prompt(spec: JobSpec, paired: str) -> bool:
    """``sketch.txt`` + ``sketch.png`` whose job uses ``sketch.png`` as an image prompt: the image is
    then a reference, not an input to vary, unless the job asks for an action or a mask."""
    used = any(slot.image == paired for slot in spec.image_prompts or ())
    if not used or spec.image_action is not None or spec.mask is not None:
        return False
    if not spec.prompt:
        raise InvalidInput(
            f"the job uses {paired} as an image prompt but has no prompt",
            where="image_prompts",
            hint="add a prompt line describing the picture, or an 'action' to apply to the image as well",
        )
    return True


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):
        return False


def _refuse_image_keys_without_image(spec: JobSpec, spec_path: Path) -> None:
    how = (
        "add 'image: picture.png' (a file in the inbox) or drop the image beside the job file "
        "with the same name"
    )
    if spec.image_action is not None:
        raise InvalidInput(
            f"{spec_path.name}: the job asks for image action '{spec.image_action}' but names no image",
            where="action",
            hint=f"{how}, or remove the action",
        )
    if spec.mask is not None:
        raise InvalidInput(
            f"{spec_path.name}: the job names the mask '{spec.mask}' but no image for it",
            where="mask",
            hint=f"{how}, or remove the mask",
        )


def _image_name_for_mask(mask_path: Path) -> str:
    stem = mask_path.name.split(".mask", 1)[0]
    return f"{stem}.png"
