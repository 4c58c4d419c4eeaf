"""One drop (a job file, an image, a mask, or a pairing of them) → validated job specs.

Every problem is an ``InvalidInput`` whose message, ``where`` and ``hint`` end up in the
``<name>.error.txt`` written next to the input in ``failed/`` (see ``error_report``).
Image paths in the returned specs are relative to the inbox, in POSIX form.
"""

from __future__ import annotations

import os
from pathlib import Path

from fooocusd.errors import InvalidInput
from fooocusd.jobs.images import ImageInfo, inspect_image
from fooocusd.jobs.resolve import normalise_image_action
from fooocusd.jobs.spec import JobSpec
from fooocusd.jobs.toml_format import parse_toml
from fooocusd.jobs.txt_format import parse_txt

JOB_FILE_PARSERS = {".txt": parse_txt, ".toml": parse_toml}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

ACCEPTED_INPUTS_REMINDER = """\
What the inbox accepts:
  name.txt         the prompt on the first line; optional 'key: value' lines (seed: 42,
                   aspect: 16:9, images: 4, ...); a line with only --- starts another job
  name.toml        the same keys as TOML (prompt = "..."), or several [[job]] tables
  name.png/.jpg/.webp
                   an image alone is varied; next to name.txt or name.toml it is that
                   job's input image; name.mask.png beside it marks the area to repaint
Lines starting with # in a .txt file are comments. Files must be saved as UTF-8."""
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
) -> list[JobSpec]:
    """Read, parse and check one drop. Paths must still be at their place inside ``inbox``.

    - a job file alone: its jobs; images it names are resolved relative to it and must stay in the inbox;
    - a job file with an image: the image becomes the input of every job that names none;
    - an image alone: one job that applies ``default_image_action`` to it;
    - a mask needs its image, and makes ``inpaint`` the default action.
    """
    inbox_root = inbox.resolve()
    action = _default_action(default_image_action, mask_path)
    if mask_path is not None and image_path is None:
        raise InvalidInput(
            f"the mask {mask_path.name} has no image to go with",
            where=mask_path.name,
            hint=f"drop the image beside it with the same name, e.g. {_image_name_for_mask(mask_path)}",
        )

    paired: str | None = None
    inspected: dict[Path, ImageInfo] = {}
    if image_path is not None:
        paired = _inbox_relative(image_path, inbox_root, key=image_path.name)
        inspected[_resolve_inside(image_path, inbox_root, key=image_path.name)] = inspect_image(
            image_path, max_image_pixels
        )
    mask: str | None = None
    if mask_path is not None and image_path is not None:
        _check_mask(mask_path, inspected[image_path.resolve()], inbox_root, max_image_pixels)
        mask = _inbox_relative(mask_path, inbox_root, key=mask_path.name)

    if spec_path is None:
        if paired is None:
            raise ValueError("load_drop needs a job file, an image, or both")
        alone = {"prompt": "", "image": paired, "image_action": action}
        return [JobSpec(**alone, mask=mask) if mask else JobSpec(**alone)]

    specs = parse_job_file(spec_path, max_job_file_bytes=max_job_file_bytes)
    attached = [
        _attach_image(spec, spec_path, paired, action, inbox_root, max_image_pixels, inspected)
        for spec in specs
    ]
    if mask is None:
        return attached
    return [spec if spec.mask else spec.model_copy(update={"mask": mask}) for spec in attached]


def parse_job_file(path: Path, *, max_job_file_bytes: int) -> list[JobSpec]:
    """Check the size, decode as UTF-8 and parse by extension (``.txt`` or ``.toml``)."""
    parser = JOB_FILE_PARSERS.get(path.suffix.lower())
    if parser is None:
        raise InvalidInput(
            f"{path.name}: job files must end in .txt or .toml",
            where=path.name,
            hint="rename the file to .txt (a plain prompt) or .toml (a full job spec)",
        )
    try:
        size = path.stat().st_size
        if size > max_job_file_bytes:
            raise _too_big(path, size, max_job_file_bytes)
        with path.open("rb") as handle:
            data = handle.read(max_job_file_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path.name}: {exc.strerror or exc}", where=path.name) from exc
    if len(data) > max_job_file_bytes:  # it grew after the size check
        raise _too_big(path, len(data), max_job_file_bytes)
    return parser(decode_job_text(data, path.name), path.name)


def decode_job_text(data: bytes, source_name: str) -> str:
    """UTF-8 (a BOM is fine) → text; anything else → ``InvalidInput`` naming the first bad line."""
    if data.startswith(_UTF16_BOMS):
        raise InvalidInput(
            f"{source_name} is saved as UTF-16, not UTF-8",
            where="line 1",
            hint="save the file as UTF-8 (in Notepad: Save As → Encoding → UTF-8)",
        )
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"{source_name} is not valid UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            where=f"line {line}",
            hint="save the file as UTF-8; most editors offer it under Save As → Encoding",
        ) from exc
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
        "Fix the file and drop it into the inbox again.",
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


def _default_action(configured: str, mask_path: Path | None) -> str:
    return "inpaint" if mask_path is not None else normalise_image_action(configured)


def _attach_image(
    spec: JobSpec,
    spec_path: Path,
    paired: str | None,
    action: str,
    inbox_root: Path,
    max_image_pixels: int,
    inspected: dict[Path, ImageInfo],
) -> JobSpec:
    if spec.image is None and paired is None:
        if spec.image_action is not None:
            raise InvalidInput(
                f"{spec_path.name}: the job asks for image action '{spec.image_action}' but names no image",
                where="action",
                hint="add 'image: picture.png' (a file in the inbox), drop the image beside the job file "
                "with the same name, or remove the action",
            )
        return spec
    if spec.image is None:
        relative = paired
    else:
        named = _named_image_path(spec.image, spec_path)
        target = _resolve_inside(named, inbox_root, key="image")
        if not target.is_file():
            prose = (
                " If that line is prompt text, write it as 'prompt: image: ...'." if " " in spec.image else ""
            )
            raise InvalidInput(
                f"{spec_path.name}: the image '{spec.image}' does not exist",
                where="image",
                hint="give the path relative to the job file, e.g. 'image: photos/cat.png', "
                f"and drop the image before (or with) the job file.{prose}",
            )
        if target not in inspected:
            inspected[target] = inspect_image(target, max_image_pixels)
        relative = target.relative_to(inbox_root).as_posix()
    return spec.model_copy(update={"image": relative, "image_action": spec.image_action or action})


def _named_image_path(value: str, spec_path: Path) -> Path:
    named = Path(os.path.expanduser(value)) if value.startswith("~") else Path(value)
    return named if named.is_absolute() else spec_path.parent / named


def _resolve_inside(path: Path, inbox_root: Path, *, key: str) -> Path:
    """The real path (symlinks followed); refused unless it lies inside the inbox."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise InvalidInput(f"cannot resolve the image path {path}: {exc}", where=key) from exc
    if not real.is_relative_to(inbox_root):
        raise InvalidInput(
            f"the image path '{path}' leads outside the inbox (to {real}); that is not allowed",
            where=key,
            hint="put the image inside the inbox and give its path relative to the job file, "
            "without '..' and without links that point elsewhere",
        )
    return real


def _inbox_relative(path: Path, inbox_root: Path, *, key: str) -> str:
    return _resolve_inside(path, inbox_root, key=key).relative_to(inbox_root).as_posix()


def _check_mask(mask_path: Path, image: ImageInfo, inbox_root: Path, max_image_pixels: int) -> None:
    _resolve_inside(mask_path, inbox_root, key=mask_path.name)
    mask = inspect_image(mask_path, max_image_pixels)
    if (mask.width, mask.height) != (image.width, image.height):
        raise InvalidInput(
            f"the mask {mask_path.name} is {mask.width}×{mask.height} but its image is "
            f"{image.width}×{image.height}",
            where=mask_path.name,
            hint="export the mask at exactly the image's size (white = repaint, black = keep)",
        )


def _image_name_for_mask(mask_path: Path) -> str:
    stem = mask_path.name.split(".mask", 1)[0]
    return f"{stem}.png"
