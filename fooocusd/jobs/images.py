"""Checking dropped images before any job uses them: real PNG/JPEG/WebP, sane size, fully readable."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fooocusd.errors import InvalidInput

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEGs from phones open as MPO
_REEXPORT = "open it in an image editor and export it again as PNG, JPEG or WebP"
_MAX_PIXELS_KEY = "intake.max_image_pixels"

# Magic bytes of formats people commonly drop by mistake, so the error can name what it is.
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF8", 0, "a GIF image"),
    (b"BM", 0, "a BMP image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"%PDF", 0, "a PDF document"),
    (b"ftypheic", 4, "a HEIC photo"),
    (b"ftypheix", 4, "a HEIC photo"),
    (b"ftypmif1", 4, "a HEIF image"),
    (b"ftypavif", 4, "an AVIF image"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str  # "PNG", "JPEG" or "WEBP"

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(head: bytes) -> str | None:
    """ "PNG", "JPEG" or "WEBP" from the first bytes of a file; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def inspect_image(path: Path, max_pixels: int) -> ImageInfo:
    """Check that ``path`` is a PNG, JPEG or WebP of at most ``max_pixels`` that decodes completely.

    The pixel count is checked from the header, before any pixel data is decoded.
    Raises ``InvalidInput`` with a reason and a hint.
    """
    where = path.name
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise InvalidInput(f"cannot read image {path.name}: {exc.strerror or exc}", where=where) from exc
    _require_accepted_content(head, path)

    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning threshold is not ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                _require_within_limit(width, height, max_pixels, path)
                info = ImageInfo(
                    width, height, image.mode, _FORMAT_ALIASES.get(image.format or "", image.format or "")
                )
                image.load()
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput(
            f"{path.name} is too large to open safely ({exc})",
            where=where,
            hint=f"shrink the image; the daemon's limit is {max_pixels:,} pixels ({_MAX_PIXELS_KEY})",
        ) from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InvalidInput(
            f"the image {path.name} is truncated or corrupt — re-export it ({exc})",
            where=where,
            hint=f"if it was still copying, drop it again once complete; otherwise {_REEXPORT}",
        ) from exc

    if info.format not in ACCEPTED_FORMATS:
        raise InvalidInput(
            f"{path.name} is a {info.format or 'unknown'} image; only PNG, JPEG and WebP are accepted",
            where=where,
            hint=_REEXPORT,
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"{path.name} has no pixels ({width}×{height})", where=where, hint=_REEXPORT)
    return info


def _require_accepted_content(head: bytes, path: Path) -> None:
    if sniff_format(head) is not None:
        return
    if not head:
        raise InvalidInput(
            f"{path.name} is empty (0 bytes)",
            where=path.name,
            hint="the copy may have failed; drop the image again",
        )
    actual = next(
        (name for magic, offset, name in _OTHER_SIGNATURES if head[offset : offset + len(magic)] == magic),
        "not an image this daemon can read",
    )
    raise InvalidInput(
        f"{path.name} is {actual}; only PNG, JPEG and WebP are accepted, whatever the file extension says",
        where=path.name,
        hint=_REEXPORT,
    )


def _require_within_limit(width: int, height: int, max_pixels: int, path: Path) -> None:
    if width * height > max_pixels:
        raise InvalidInput(
            f"{path.name} is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels ({_MAX_PIXELS_KEY})",
            where=path.name,
            hint=f"shrink the image, or raise {_MAX_PIXELS_KEY} in the config if you trust its source",
        )
