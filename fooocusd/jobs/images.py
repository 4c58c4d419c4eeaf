"""Checking dropped images before any job uses them: a real image, sane size, fully readable.

PNG, JPEG and WebP, and what phones and other programs save: HEIC/HEIF (iPhones, decoded by pi-heif),
AVIF, TIFF, BMP and GIF. A file with several frames (an animated GIF or WebP, a multi-page TIFF)
gives its first.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from pi_heif import register_heif_opener
from PIL import Image, ImageOps, UnidentifiedImageError

from fooocusd.access import cannot_read
from fooocusd.errors import InvalidInput

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "HEIF", "AVIF", "TIFF", "BMP", "GIF")
_ACCEPTED_LIST = "PNG, JPEG, WebP, HEIC, AVIF, TIFF, BMP and GIF images"
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEGs from phones open as MPO
_REEXPORT = "open it in an image editor and export it again as PNG, JPEG or WebP"
_MAX_PIXELS_KEY = "intake.max_image_pixels"
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

# Magic bytes of formats people commonly drop by mistake, so the error can name what it is.
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"ftypqt", 4, "a video (a Live Photo's movie?)"),
    (b"8BPS", 0, "a Photoshop document"),
)
# ISO-BMFF brands (bytes 8-12, after "ftyp"): HEIC from iPhones and Android, and AVIF.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# Registered once: Pillow then opens HEIC/HEIF like any other format.
register_heif_opener()


_EXIF_ORIENTATION_TAG = 0x0112
_SIDEWAYS_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str  # one of ACCEPTED_FORMATS
    orientation: int = 1  # EXIF orientation; 1 = stored upright

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied, as the worker decodes it."""
        if self.orientation in _SIDEWAYS_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


def sniff_format(head: bytes) -> str | None:
    """One of ``ACCEPTED_FORMATS`` from the first 16 bytes of a file; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "HEIF" if brand in _HEIF_BRANDS else "AVIF" if brand in _AVIF_BRANDS else None
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":  # reserved, always zero
        return "BMP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


# Each accepted format in words, and the extension a file of it should have.
_FORMAT_NAMES: dict[str, tuple[str, str]] = {
    "PNG": ("a PNG image", ".png"),
    "JPEG": ("a JPEG image", ".jpg"),
    "WEBP": ("a WebP image", ".webp"),
    "HEIF": ("a HEIC photo", ".heic"),
    "AVIF": ("an AVIF image", ".avif"),
    "TIFF": ("a TIFF image", ".tif"),
    "BMP": ("a BMP image", ".bmp"),
    "GIF": ("a GIF image", ".gif"),
}


def binary_content(head: bytes) -> tuple[str, str | None] | None:
    """What a file that should be text is, from its first 16 bytes: ``("a PNG image", ".png")`` for
    an image this daemon accepts (with the extension to give it), ``("a PDF document", None)`` for
    another known format; None when it does not start like one."""
    image_format = sniff_format(head)
    if image_format is not None:
        return _FORMAT_NAMES[image_format]
    other = next((name for magic, offset, name in _OTHER_SIGNATURES if head[offset:].startswith(magic)), None)
    return (other, None) if other else None


def inspect_image(path: Path, max_pixels: int) -> ImageInfo:
    """Check that ``path`` is an image of ``ACCEPTED_FORMATS`` of at most ``max_pixels`` that decodes
    completely.

    The pixel count is checked from the header, before any pixel data is decoded.
    Raises ``InvalidInput`` with a reason and a hint.
    """
    where = path.name
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise cannot_read(path, exc, "image") from exc
    _require_accepted_content(head, path)

    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning threshold is not ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                _require_within_limit(width, height, max_pixels, path)
                image.load()
                info = ImageInfo(
                    width,
                    height,
                    image.mode,
                    _FORMAT_ALIASES.get(image.format or "", image.format or ""),
                    _exif_orientation(image),
                )
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked as it opens the file
        claimed = _PILLOW_BOMB_PIXELS.search(str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than Pillow opens"
        raise _over_limit(path, size, max_pixels) from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InvalidInput(
            f"the image {path.name} is truncated or corrupt — re-export it ({exc})",
            where=where,
            hint=f"if it was still copying, drop it again once complete; otherwise {_REEXPORT}",
        ) from exc

    if info.format not in ACCEPTED_FORMATS:
        raise InvalidInput(
            f"{path.name} is a {info.format or 'unknown'} image; only {_ACCEPTED_LIST} are accepted",
            where=where,
            hint=_REEXPORT,
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"{path.name} has no pixels ({width}×{height})", where=where, hint=_REEXPORT)
    return info


def _exif_orientation(image: Image.Image) -> int:
    value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) else 1


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
        f"{path.name} is {actual}; only {_ACCEPTED_LIST} are accepted, whatever the file extension says",
        where=path.name,
        hint=_REEXPORT,
    )


def _require_within_limit(width: int, height: int, max_pixels: int, path: Path) -> None:
    if width * height > max_pixels:
        raise _over_limit(path, f"{width}×{height} = {width * height:,} pixels", max_pixels)


def _over_limit(path: Path, size: str, max_pixels: int) -> InvalidInput:
    return InvalidInput(
        f"{path.name} is {size}, over the limit of {max_pixels:,} pixels ({_MAX_PIXELS_KEY})",
        where=path.name,
        hint=f"shrink the image, or raise {_MAX_PIXELS_KEY} in the config if you trust its source",
    )


# -- decoding for the worker -------------------------------------------------------------------

NEUTRAL_BACKGROUND = (128, 128, 128)
"""Transparent pixels are composited onto mid grey: it biases neither light nor dark results."""
MASK_ASPECT_TOLERANCE = 0.01
"""A mask whose aspect ratio differs from its image's by more than 1% is refused, not stretched."""


def load_input_image(path: Path, max_pixels: int) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, upright, ready for the engine.

    Checks it first (``inspect_image``). EXIF orientation is applied; CMYK and palette images
    are converted; 16-bit images are scaled to 8 bits; transparency (RGBA, LA, palette with a
    transparent colour) is composited onto ``NEUTRAL_BACKGROUND``.
    """
    inspect_image(path, max_pixels)
    with _decoding(path, max_pixels) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def load_mask(path: Path, size: tuple[int, int], max_pixels: int = 64_000_000) -> Image.Image:
    """The mask at ``path`` as greyscale ("L"; white = repaint, black = keep), at ``size`` (w, h).

    EXIF orientation is applied as for the image. Transparency counts as black (keep). A mask of
    another size but the same aspect ratio (within 1%) is resized to ``size``; one of another
    aspect ratio is refused, since stretching it would repaint the wrong place.
    """
    inspect_image(path, max_pixels)
    with _decoding(path, max_pixels) as image:
        upright = ImageOps.exif_transpose(image)
        mask = _to_grey(upright)
    if mask.size == size:
        return mask
    require_mask_fits(mask.size, size, path.name)
    # Nearest keeps a hard-edged mask hard; the paste-back feathers it anyway.
    return mask.resize(size, Image.Resampling.NEAREST)


def require_mask_fits(mask_size: tuple[int, int], image_size: tuple[int, int], mask_name: str) -> None:
    """Refuse a mask that cannot be scaled onto its image: aspect ratios more than 1% apart.

    Sizes are upright (width, height). A mask of the same shape but another size is fine:
    ``load_mask`` resizes it.
    """
    (mask_width, mask_height), (width, height) = mask_size, image_size
    if abs((mask_width / mask_height) / (width / height) - 1.0) > MASK_ASPECT_TOLERANCE:
        raise InvalidInput(
            f"the mask {mask_name} is {mask_width}×{mask_height} but its image is {width}×{height}; "
            "their shapes differ, so the mask cannot be scaled to fit",
            where=mask_name,
            hint="export the mask at the image's size (white = repaint, black = keep)",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, transparency composited onto ``NEUTRAL_BACKGROUND``."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        return _sixteen_bit_to_l(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in {"RGBa", "La"}:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "F":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")  # RGB, L, 1, CMYK (Pillow's own ink inversion), YCbCr, LAB...


def _to_grey(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        return _sixteen_bit_to_l(image)
    if image.mode == "L":
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return image.convert("RGB").convert("L")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale → 8 bits, keeping the full 0–65535 range."""
    return image.point(lambda value: value / 257 + 0.5).convert("L")  # + 0.5: round, not truncate


class _decoding:
    """``Image.open`` + ``load`` under our pixel limit, with decoding errors turned into ``InvalidInput``."""

    def __init__(self, path: Path, max_pixels: int) -> None:
        self.path = path
        self.max_pixels = max_pixels
        self.image: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(self.path)
                _require_within_limit(image.width, image.height, self.max_pixels, self.path)
                image.load()
        except InvalidInput:
            raise
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise InvalidInput(
                f"the image {self.path.name} is truncated or corrupt — re-export it ({exc})",
                where=self.path.name,
                hint=f"if it was still copying, drop it again once complete; otherwise {_REEXPORT}",
            ) from exc
        self.image = image
        return image

    def __exit__(self, *_: object) -> None:
        if self.image is not None:
            self.image.close()
