"""The pictures a drop uses: its paired image and mask, and any image or mask a job names by path.

Each one is followed to its real path (symbolic links included), must lie inside the inbox, and
must be an accepted image (``images.ACCEPTED_FORMATS``) within the pixel limit. It is then known
by its inbox-relative path in POSIX form, which is what job specs store and what the worker looks
up (claim folder, then inbox).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from fooocusd.errors import InvalidInput
from fooocusd.jobs.images import ImageInfo, inspect_image, require_mask_fits
from fooocusd.jobs.spec import JobSpec
from fooocusd.name_spelling import spelled_on_disk

Role = Literal["image", "mask", "image prompt"]
_EXAMPLES: dict[Role, str] = {
    "image": "photos/cat.png",
    "mask": "photos/cat-mask.png",
    "image prompt": "refs/pose.png pyracanny",
}


def paths_named_by(spec: JobSpec) -> list[str]:
    """The paths a parsed (not yet resolved) job names, as written: every key that names an inbox file.

    Intake uses it to wait for, and hold back, files a job file names before they are resolved;
    a new key that names a file belongs here too."""
    written = [spec.image, spec.mask, *(slot.image for slot in spec.image_prompts or ())]
    return [value for value in written if value]


def resolve_written_path(value: str, job_file: Path) -> Path:
    """Where a path written in a job file points: relative to the job file, ``~`` expanded, and
    spelled as on disk (``name_spelling``: ``café`` typed finds ``café`` from a Mac, and
    ``refs/cat.png`` finds ``refs/Cat.png`` where that is the only such name). Where the path
    as written is not there, it is read as it was probably meant: without the quotes around it
    (``image: "cat.png"`` in a .txt file), with Windows' ``\\`` as folder separators
    (``refs\\cat.png``), and as the path of a ``file://`` address (what a file dragged into a
    text editor becomes)."""
    as_written, *as_meant = _readings(value)
    path = _joined(as_written, job_file)
    if os.path.lexists(path):
        return path
    for reading in as_meant:  # each looked at on disk only while none before it was there
        candidate = _joined(reading, job_file)
        if os.path.lexists(candidate):
            return candidate
    return path


def _readings(value: str) -> list[str]:
    """``value`` as written, then as it was probably meant."""
    readings = [value]
    if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
        readings.append(value[1:-1])
    readings += [unquote(urlsplit(reading).path) for reading in readings if reading.startswith("file://")]
    readings += [reading.replace("\\", "/") for reading in readings if "\\" in reading]
    return readings


def _joined(written: str, job_file: Path) -> Path:
    path = Path(os.path.expanduser(written)) if written.startswith("~") else Path(written)
    return spelled_on_disk(path if path.is_absolute() else job_file.parent / path)


_SEPARATORS = "/\\"
_WEB_ADDRESS = re.compile(r"^[\"']?https?://", re.IGNORECASE)
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def _refuse_what_is_no_picture(path: Path, value: str, job_file: Path, role: Role) -> None:
    """A job that names a folder, or itself, where a picture belongs."""
    if path.is_dir():
        raise InvalidInput(
            f"{job_file.name}: the {role} '{value}' is a folder, not a picture",
            where=role,
            hint=f"name one picture in it, e.g. '{role}: {value.rstrip(_SEPARATORS)}/cat.png'",
        )
    if path.exists() and path.samefile(job_file):
        raise InvalidInput(
            f"{job_file.name}: the {role} '{value}' is this job file itself, not a picture",
            where=role,
            hint=f"name the picture to use, e.g. '{role}: {_EXAMPLES[role]}'",
        )


class DropFiles:
    """Checks pictures for one drop; each file is inspected once however many jobs use it."""

    def __init__(self, inbox: Path, max_image_pixels: int) -> None:
        self.inbox_root = inbox.resolve()
        self.max_image_pixels = max_image_pixels
        self._inspected: dict[str, ImageInfo] = {}
        # Every file a job named by path (inbox-relative): intake claims these with the drop.
        self.named_files: list[str] = []

    def dropped(self, path: Path, role: Role) -> str:
        """A picture that arrived as part of the drop (``cat.png``, ``cat.mask.png``)."""
        relative = self._inside(path, role, where=path.name)
        self._inspect(relative)
        return relative

    def named(self, value: str, job_file: Path, role: Role) -> str:
        """The picture a job names in its ``image`` or ``mask`` key, relative to the job file."""
        path = resolve_written_path(value, job_file)
        relative = self._inside(path, role, where=role)
        _refuse_what_is_no_picture(self.inbox_root / relative, value, job_file, role)
        if not (self.inbox_root / relative).is_file():
            if _WEB_ADDRESS.match(value):
                raise InvalidInput(
                    f"{job_file.name}: the {role} '{value}' is a web address; fooocusd downloads nothing",
                    where=role,
                    hint=f"save the picture into the inbox beside the job file and write its name "
                    f"('{role}: {_EXAMPLES[role]}')",
                )
            if _WINDOWS_PATH.match(value):
                name = PureWindowsPath(value).name
                raise InvalidInput(
                    f"{job_file.name}: the {role} '{value}' is a path on a Windows computer, which "
                    "fooocusd cannot reach",
                    where=role,
                    hint=f"put {name} into the inbox beside the job file and write '{role}: {name}' "
                    "(paths are relative to the job file)",
                )
            prose = (
                f" If that line is prompt text, write it as 'prompt: {role}: ...'." if " " in value else ""
            )
            raise InvalidInput(
                f"{job_file.name}: the {role} '{value}' does not exist",
                where=role,
                hint=f"give the path relative to the job file, e.g. '{role}: {_EXAMPLES[role]}', "
                f"and drop the {role} before (or with) the job file.{prose}",
            )
        self._inspect(relative)
        if relative not in self.named_files:
            self.named_files.append(relative)
        return relative

    def require_mask_fits(self, mask: str, image: str, *, where: str) -> None:
        """The mask must have its image's shape (same aspect within 1%); the worker scales it to size."""
        mask_size = self._inspected[mask].upright_size
        image_size = self._inspected[image].upright_size
        try:
            require_mask_fits(mask_size, image_size, PurePosixPath(mask).name)
        except InvalidInput as exc:
            exc.where = where
            raise

    def _inside(self, path: Path, role: Role, *, where: str) -> str:
        """``path`` as an inbox-relative POSIX path; refused unless its real location is in the inbox."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops
            raise InvalidInput(f"cannot resolve the {role} path {path}: {exc}", where=where) from exc
        if not real.is_relative_to(self.inbox_root):
            raise InvalidInput(
                f"the {role} path '{path}' leads outside the inbox (to {real}); that is not allowed",
                where=where,
                hint=f"put the {role} inside the inbox and give its path relative to the job file, "
                "without '..' and without links that point elsewhere",
            )
        return real.relative_to(self.inbox_root).as_posix()

    def _inspect(self, relative: str) -> None:
        if relative not in self._inspected:
            self._inspected[relative] = inspect_image(self.inbox_root / relative, self.max_image_pixels)
